"""Per-case review pages: one HTML page and one PNG per case, plus an index over all cases.

- ``figure``: the case PNG (representative slice, mask outline, Grad-CAM panel, predictions).
- ``pages``: ``write_case_report`` and ``write_index``: static HTML with relative links, inline CSS,
  no scripts, so the folder opens in any browser from disk, or zipped and mailed.
- ``folder``: ``write_folder_report``: every page and the index from the predictor's files.
"""
