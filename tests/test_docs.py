"""The user docs match the code: every documented --flag exists in its CLI, the README's set-up is
the two promised commands, CI runs the README's test command, and the paths the docs name exist.

Commands are recognised by their program (``pipeline.py``, ``evaluation.py``, ``nnunet_mtl_predict``,
``nnunet_mtl_explain``, ``python -m split_tools``); a flag in prose belongs to the CLI of its section.
"""
import functools
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
EXTRA_DOCS = [os.path.join(ROOT, "docs", "user_guide.md")]
NOTEBOOK = os.path.join(ROOT, "notebooks", "nnunet_mtl_demo.ipynb")

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")  # may wrap a line
PYTEST = re.compile(r"(python3? -m )?pytest\b")
# (pattern that starts a CLI's command, CLI name); the console scripts of pyproject.toml count too
PROGRAMS = [(re.compile(r"(?:^|[\s/])pipeline\.py\b|\bnnunet_mtl_pipeline\b"), "pipeline"),
            (re.compile(r"(?:^|[\s/])evaluation\.py\b|\bnnunet_mtl_evaluate\b"), "evaluation"),
            (re.compile(r"\bnnunet_mtl_predict\b"), "predict"),
            (re.compile(r"\bnnunet_mtl_explain\b"), "explain"),
            (re.compile(r"\bnnunet_mtl_classify\b"), "classify"),
            (re.compile(r"\bnnunet_mtl_add_heads\b"), "add_heads"),
            (re.compile(r"-m\s+split_tools\b"), "split_tools")]
# README section heading (substring) -> the CLIs its prose flags belong to; other sections: any CLI
SECTION_CLIS = {"Set-up": {"pipeline"}, "The pipeline": {"pipeline"}, "Input layouts": {"pipeline"},
                "How a case gets its class": {"pipeline", "predict"}, "Evaluation": {"evaluation"},
                "Splits": {"split_tools"}, "Grad-CAM": {"explain", "pipeline"}, "Notebook": {"pipeline"}}


# --------------------------------------------------------------------------- the CLIs
def _options(parser) -> set:
    return set(parser._option_string_actions)


@functools.lru_cache(maxsize=None)
def cli_flags() -> dict:
    """CLI name -> its option strings, from the parser builders in nnunet_mtl/cli/."""
    from nnunet_mtl.cli import add_heads, classify, evaluate, explain, pipeline, predict
    from split_tools import cli as split
    return {"pipeline": _options(pipeline.build_parser()), "evaluation": _options(evaluate.build_parser()),
            "predict": _options(predict.build_parser()), "explain": _options(explain.build_parser()),
            "split_tools": _options(split.build_parser()), "classify": _options(classify.build_parser()),
            "add_heads": _options(add_heads.build_parser())}


# the documented commands and the parser each one runs
ENTRY_POINTS = [(["pipeline.py"], "pipeline"), (["evaluation.py"], "evaluation"), (["-m", "split_tools"], "split_tools")]


# --------------------------------------------------------------------------- markdown parsing
def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def sections(text: str) -> list:
    """[(heading, body)] split at ## / ### headings outside code blocks (text before the first: '')."""
    out, heading, lines, in_code = [], "", [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"#{2,3} ", line):
            out.append((heading, "\n".join(lines)))
            heading, lines = line.lstrip("#").strip(), []
        else:
            lines.append(line)
    out.append((heading, "\n".join(lines)))
    return out


def shell_blocks(text: str) -> list:
    return [body for lang, body in FENCE.findall(text) if lang in ("", "bash", "sh", "shell", "console")]


def command_lines(block: str) -> list:
    """Commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    cmds = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            cmds.append(line)
    return cmds


def commands(line: str) -> list:
    """[(cli or None, text)] for each command of a line (split at &&, ||, ;; a lone | is usually
    'either' in docs, e.g. [--labels_csv L | --dataset_json D], so it does not split)."""
    out = []
    for part in re.split(r"&&|\|\||;", line):
        for pattern, cli in PROGRAMS:
            m = pattern.search(part)
            if m:
                out.append((cli, part[m.end():]))
                break
        else:
            out.append((None, part))
    return out


def documented_flags(text: str, where: str) -> list:
    """[(where, cli set, flag, context)] for every --flag in a markdown text, attributed to its CLI."""
    found = []
    for heading, body in sections(text):
        for block in shell_blocks(body):
            for line in command_lines(block):
                for cli, rest in commands(line):
                    if cli:
                        found += [(f"{where} / {heading}", {cli}, f, line) for f in FLAG.findall(rest)]
        prose = heading + "\n" + FENCE.sub("", body)
        default = next((clis for key, clis in SECTION_CLIS.items() if key in heading), set(cli_flags()))
        for span in INLINE.findall(prose):
            if PYTEST.match(span.strip()):  # pytest's own flags, not one of our command lines'
                continue
            parts = commands(span)
            if any(cli for cli, _ in parts):
                found += [(f"{where} / {heading}", {cli}, f, span) for cli, rest in parts if cli
                          for f in FLAG.findall(rest)]
            else:
                found += [(f"{where} / {heading}", default, f, span) for f in FLAG.findall(span)]
    return found


def notebook_markdown() -> str:
    with open(NOTEBOOK, encoding="utf-8") as f:
        nb = json.load(f)
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def _check(found: list) -> None:
    flags = cli_flags()
    bad = [f"{where}: {flag!r} is not an option of {' / '.join(sorted(clis))} (in: {ctx})"
           for where, clis, flag, ctx in found if not any(flag in flags[c] for c in clis)]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- tests
def test_every_readme_flag_exists_in_its_cli():
    found = documented_flags(read(README), "README.md")
    _check(found)
    per_cli = {}
    for _, clis, flag, _ in found:
        for c in clis:
            per_cli.setdefault(c, set()).add(flag)
    # the parser above must really see the docs (a regex that finds nothing would pass everything)
    assert len(per_cli.get("pipeline", ())) >= 25 and "--demo" in per_cli["pipeline"]
    assert {"--validation_data", "--prediction_csv", "--threshold_tuning"} <= per_cli.get("evaluation", set())
    assert {"--dataset_json", "--mode", "--folds", "--test_fraction"} <= per_cli.get("split_tools", set())
    assert "--backend" in per_cli.get("predict", set())


@pytest.mark.parametrize("path", [NOTEBOOK] + EXTRA_DOCS, ids=os.path.basename)
def test_flags_in_other_user_docs_exist(path):
    if not os.path.isfile(path):
        pytest.skip(f"{path} not written")
    text = notebook_markdown() if path.endswith(".ipynb") else read(path)
    _check(documented_flags(text, os.path.basename(path)))


def test_a_wrong_flag_is_caught():
    text = "## Evaluation\n```bash\npython evaluation.py --output_folder O --no_such_flag\n```\n" \
           "`--planner` in prose of the evaluation section\n"
    found = documented_flags(text, "t")
    with pytest.raises(AssertionError, match="--no_such_flag"):
        _check(found)
    with pytest.raises(AssertionError, match="--planner"):
        _check([f for f in found if f[2] == "--planner"])


def _setup_commands() -> list:
    body = next(b for h, b in sections(read(README)) if h.startswith("Set-up"))
    blocks = shell_blocks(body)
    assert len(blocks) == 1, "the Set-up section has one code block"
    return command_lines(blocks[0])


def test_readme_has_exactly_the_two_setup_commands():
    cmds = _setup_commands()
    assert len(cmds) == 2, cmds
    install, tests = cmds
    assert install.startswith("bash install.sh") and "pipeline.py --demo" in install
    assert re.fullmatch(r"python3? -m pytest .*tests", tests)
    assert os.path.isfile(os.path.join(ROOT, "install.sh"))
    assert any(h.startswith("Set-up") and "two commands" in h for h, _ in sections(read(README)))


def _normal(cmd: str) -> str:
    return re.sub(r"\bpython3\b", "python", " ".join(cmd.split()))


def test_ci_runs_the_readme_test_command():
    readme_test = _normal(_setup_commands()[1])
    ci = [_normal(c) for c in command_lines(read(os.path.join(ROOT, ".ci", "run")))]
    assert readme_test in ci, f"{readme_test!r} not in .ci/run"
    assert "bash install.sh" in ci
    tests_section = next(b for h, b in sections(read(README)) if h == "Tests")
    assert readme_test in [_normal(s) for s in INLINE.findall(tests_section)]


def test_paths_named_in_the_readme_exist():
    names = {s.split()[0] for s in INLINE.findall(FENCE.sub("", read(README)))}
    paths = {n.rstrip("/") for n in names if re.fullmatch(
        r"(docs|notebooks|nnunet_mtl|tests|benchmarks|split_tools|\.ci)(/[\w.-]+)*/?|[\w-]+\.(py|sh|ipynb)", n)}
    paths = {p for p in paths if not p.startswith("nnunet_mtl.")}
    assert "notebooks/nnunet_mtl_demo.ipynb" in paths
    missing = sorted(p for p in paths if not os.path.exists(os.path.join(ROOT, p)))
    assert not missing, missing


@pytest.mark.parametrize("command,cli", ENTRY_POINTS, ids=[c for _, c in ENTRY_POINTS])
def test_the_documented_entry_points_run_the_package_clis(command, cli):
    """``python pipeline.py``, ``python evaluation.py`` and ``python -m split_tools`` stay thin: their --help
    lists exactly the options of the parser in nnunet_mtl/cli/."""
    proc = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(FLAG.findall(proc.stdout)) == {f for f in cli_flags()[cli] if f.startswith("--")}


def test_console_scripts_point_into_the_package():
    import importlib
    import tomllib
    text = read(os.path.join(ROOT, "pyproject.toml"))
    scripts = tomllib.loads(text)["project"]["scripts"]
    for name, target in scripts.items():
        module, func = target.split(":")
        assert module.startswith("nnunet_mtl.cli."), name
        assert callable(getattr(importlib.import_module(module), func)), name
    assert scripts["nnunet_mtl_pipeline"] == "nnunet_mtl.cli.console:pipeline"  # runs cli.pipeline.main
    assert scripts["nnunet_mtl_evaluate"] == "nnunet_mtl.cli.evaluate:main"
    assert "py-modules" not in text, "pipeline.py and evaluation.py are entry points, not installed modules"
