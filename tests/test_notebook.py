"""notebooks/nnunet_mtl_demo.ipynb runs top to bottom (tiny budget) and shows its figures and tables;
the display helpers behind it work without pandas and on any matplotlib style."""
import json
import os
import subprocess
import sys
import time

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "nnunet_mtl_demo.ipynb")


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _cell(nb, needle: str):
    """The one code cell whose source contains ``needle`` (tests name cells by what they call)."""
    found = [c for c in _code_cells(nb) if needle in c.source]
    assert len(found) == 1, f"expected one code cell calling {needle!r}, found {len(found)}"
    return found[0]


def _pngs(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def _html(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def _ensure_kernel() -> None:
    """The python3 kernel spec; installed for this user only when missing (ipykernel's own command)."""
    from jupyter_client.kernelspec import KernelSpecManager
    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True)


# --------------------------------------------------------------------------- the stored notebook
def test_notebook_is_stored_without_outputs_and_uses_the_python_api():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for c in _code_cells(nb):
        assert c.outputs == [] and c.execution_count is None, "store the notebook without outputs"
    source = "\n".join(c.source for c in _code_cells(nb))
    for call in ("workflow.prepare(", "workflow.train(", "workflow.infer(", "workflow.evaluate_validation("):
        assert call in source
    assert "pipeline.py" not in source, "code cells use the Python API, not shell-outs"
    params = _code_cells(nb)[0].source
    assert "NNUNET_MTL_NOTEBOOK_BASE_DIR" in params and "NNUNET_MTL_NOTEBOOK_BUDGET" in params
    assert "IN_COLAB" in _cell(nb, "pip").source


# --------------------------------------------------------------------------- run it
@pytest.mark.timeout(600)
def test_notebook_runs_end_to_end_on_the_tiny_demo(tmp_path):
    import nbclient
    _ensure_kernel()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k != "MPLBACKEND"}
    env.update(NNUNET_MTL_NOTEBOOK_BASE_DIR=str(tmp_path / "work"), NNUNET_MTL_NOTEBOOK_BUDGET="tiny",
               nnUNet_n_proc_DA="0", nnUNet_def_n_proc="2", nnUNet_compile="f", PYTHONPATH=ROOT)
    client = nbclient.NotebookClient(nb, timeout=480, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    start = time.time()
    try:
        client.execute(env=env)
    finally:
        nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # kept for a look when something fails
    print(f"notebook ran in {time.time() - start:.0f} s")

    assert _pngs(_cell(nb, "nbu.show_cases(f\"{raw}/imagesTr\"")) == 1, "training cases with mask overlays"
    assert _pngs(_cell(nb, "plot_training_curve")) == 1, "training curve"
    table = _html(_cell(nb, "nbu.show_table(csv_path)"))
    assert "<table" in table and "case_id" in table and "finding_prob_present" in table, "predictions table"
    assert _pngs(_cell(nb, "prediction_captions")) == 1, "test cases with predicted masks"
    review = "".join(o.get("text", "") for o in _cell(nb, "nbu.show_review(csv_path)").outputs)
    assert "flagged for review" in review or "no review columns" in review, "the review columns"
    evaluated = _cell(nb, "show_metrics")
    assert _pngs(evaluated) >= 3, "confusion matrix, ROC curve, DSC distribution"
    dice_table = _html(evaluated)
    assert "<table" in dice_table and "DSC mean" in dice_table, "the DSC table"
    printed = "".join(o.get("text", "") for o in evaluated.outputs)
    dataset_json = json.loads(next((tmp_path / "work").glob("nnUNet_raw/*/dataset.json")).read_text())
    for name, value in dataset_json["labels"].items():
        if value:
            assert f">{name}<" in dice_table, f"a DSC row for {name}"
            assert f"DSC {name}: mean" in printed, f"the summary's DSC line for {name}"
    assert "finding (n=" in printed, "the evaluation summary"
    assert "case_id" in _html(_cell(nb, "per_case.csv"))

    work = tmp_path / "work"
    evaluation = work / "evaluation_fold0"
    for name in ("metrics.json", "per_case.csv", "confusion_finding.png", "roc_finding.png"):
        assert (evaluation / name).is_file(), name
    rows = (work / "predictions" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("case_id,finding,") and len(rows) == 1 + 2
    history = json.loads(next(work.glob("nnUNet_results/*/*/fold_0/mtl_progress.json")).read_text())
    assert [h["epoch"] for h in history] == [0, 1]

    gradcam = _cell(nb, "explain_available")
    if "Grad-CAM not available" not in "".join(o.get("text", "") for o in gradcam.outputs):
        assert _pngs(gradcam) == 1, "Grad-CAM overlay"


# --------------------------------------------------------------------------- helpers, fast
def test_table_falls_back_to_html_without_pandas(tmp_path, monkeypatch, capsys):
    from nnunet_mtl import notebook_utils as nbu
    path = tmp_path / "predictions.csv"
    path.write_text("case_id,finding,finding_prob_absent,finding_prob_present\n"
                    "c1,present,0.25,0.75\nc<2>,absent,0.875,0.125\n")
    shown = []
    monkeypatch.setattr(nbu, "_display", lambda obj, fallback="": shown.append(obj))
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    nbu.show_table(str(path))
    html = shown[0].data
    assert "<th>finding_prob_present</th>" in html and "<td>0.750</td>" in html and "c&lt;2&gt;" in html
    assert nbu.prediction_captions(str(path)) == {"c1": "finding: present (0.75)", "c<2>": "finding: absent (0.88)"}


def test_training_curve_shows_losses_and_phase_weights(tmp_path):
    from nnunet_mtl import notebook_utils as nbu
    history = [{"epoch": e, "train_seg_loss": 1.0 / (e + 1), "train_head_loss": 0.7, "val_head_loss": None,
                "train_loss_a": 0.5, "train_loss_b": 0.2, "seg_weight": 0.9 - 0.1 * e, "head_weight": 0.1 + 0.1 * e}
               for e in range(3)]
    (tmp_path / "mtl_progress.json").write_text(json.dumps(history))
    fig = nbu.plot_training_curve(str(tmp_path), show=False)
    loss_ax, weight_ax = fig.axes[:2]
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == ["segmentation loss (train)", "head loss (train)", "a loss (train)", "b loss (train)"]
    assert [line.get_label() for line in weight_ax.get_lines()] == ["w_seg", "w_head"]
    assert list(weight_ax.get_lines()[1].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])


def test_budgets():
    from nnunet_mtl import notebook_utils as nbu
    from nnunet_mtl.training.knobs import DEMO_BUDGET
    assert nbu.budget("demo")["train"] == DEMO_BUDGET
    assert nbu.budget("full")["shrink"] is None and nbu.budget("full")["train"] == {}
    assert nbu.budget("tiny")["train"]["num_epochs"] == 2
    with pytest.raises(ValueError, match="unknown budget"):
        nbu.budget("huge")


def test_show_metrics_prints_the_summary_and_a_dice_table(monkeypatch, capsys):
    from nnunet_mtl import notebook_utils as nbu
    shown = []
    monkeypatch.setattr(nbu, "_display", lambda obj, fallback="": shown.append(obj))
    monkeypatch.setitem(sys.modules, "pandas", None)
    dsc = {"mean": 0.8125, "median": 0.8, "std": 0.1, "min": 0.7, "max": 0.9, "n": 4, "n_nan": 0}
    nbu.show_metrics({"n_cases": 4, "segmentation": {"labels": {"1": {"name": "lung", "dsc": dsc}},
                                                     "regions": {"whole": {"labels": [1, 2], "dsc": dsc}}},
                      "classification": {"finding": {"macro_f1": 0.5, "accuracy": 0.75, "n": 4}}})
    out = capsys.readouterr().out
    assert "DSC lung: mean 0.812" in out and "finding (n=4): macro_f1 0.500, accuracy 0.750" in out
    html = shown[0].data
    assert "<th>DSC mean</th>" in html and "<td>lung</td>" in html and "<td>whole</td>" in html
    assert "<td>0.812</td>" in html or "<td>0.813</td>" in html


def test_notebook_helpers_use_the_library_not_the_command_lines():
    source = open(os.path.join(ROOT, "nnunet_mtl", "notebook_utils.py"), encoding="utf-8").read()
    for needle in ("import pipeline", "from pipeline", "nnunet_mtl.cli", "import evaluation", "from evaluation "):
        assert needle not in source, needle


def test_show_review_lists_the_flagged_cases_and_the_columns(tmp_path, monkeypatch, capsys):
    from nnunet_mtl import notebook_utils as nbu
    shown = []
    monkeypatch.setattr(nbu, "_display", lambda obj, fallback="": shown.append(obj))
    monkeypatch.setitem(sys.modules, "pandas", None)
    path = tmp_path / "predictions.csv"
    path.write_text("case_id,finding,finding_prob_absent,finding_prob_present,finding_set,conformal_coverage,"
                    "needs_review,seg_quality,seg_quality_flag\n"
                    "c1,present,0.25,0.75,present,0.9,no,0.91,no\n"
                    "c2,absent,0.55,0.45,absent|present,0.9,yes,0.35,yes\n")
    assert nbu.show_review(str(path)) == ["c2"]
    assert "1 of 2 case(s) flagged for review: c2 (needs_review, seg_quality_flag)" in capsys.readouterr().out
    html = shown[0].data
    assert "<th>finding_set</th>" in html and "<th>seg_quality</th>" in html and "ood_score" not in html
    assert html.index("<td>c2</td>") < html.index("<td>c1</td>")  # flagged first
    path.write_text("case_id,finding,finding_prob_absent,finding_prob_present\nc1,present,0.25,0.75\n")
    assert nbu.show_review(str(path)) == []  # an older table: one line, no error
    assert "no review columns" in capsys.readouterr().out
