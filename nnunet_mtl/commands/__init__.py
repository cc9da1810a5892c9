"""What every command line shares and that sits below them all (split_tools' command too): how a command ends
when it cannot go on."""
