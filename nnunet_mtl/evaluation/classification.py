"""Classification scores of one target on whole cases: the metrics of ``nnunet_mtl.evaluation.metrics`` with
bootstrap CIs, an optional fixed decision threshold (binary), and threshold tuning on this set."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_mtl.evaluation import metrics as M
from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.io_utils import read_json
from nnunet_mtl.targets import Target

CI_METHOD = "percentile bootstrap, cases resampled with replacement within each true class (stratified)"


def _ci_fn(n_classes: int, with_auc: bool):
    def fn(yt, yp, pr):
        out = M.scores_from_confusion(M.confusion_matrix(yt, yp, n_classes))
        if with_auc:
            out["roc_auc"] = M.roc_auc(yt, pr, n_classes)[0]
        return out
    return fn


def classification_block(target: Target, y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray,
                         n_bootstrap: int, seed: int) -> dict:
    """Headline scores, AUC, confusion matrix, per-class report and (n_bootstrap > 0) 95% CIs.

    The CIs resample cases within each true class (``CI_METHOD``): a resample that lost the
    minority class would score an all-majority predictor as perfect."""
    out = M.classification_metrics(y_true, y_pred, probs, target.classes)
    if n_bootstrap > 0:
        with_auc = not out["roc_auc_note"]
        out["ci95"] = M.bootstrap_ci(_ci_fn(len(target.classes), with_auc), [y_true, y_pred, probs],
                                     n_bootstrap, seed, strata=y_true)
        out["ci95_method"] = CI_METHOD
        note = degenerate_ci_note(out["ci95"], y_true, y_pred, n_bootstrap, seed)
        if note:
            out["ci_note"] = note
    return out


def degenerate_ci_note(ci95: Mapping, y_true, y_pred, n_bootstrap: int, seed: int) -> str:
    """A note for zero-width CIs ("" when none): 0.459 [0.459, 0.459] alone reads as certainty, when it
    usually means a collapsed head that predicts one class in every resample (counted on the CIs' resamples)."""
    flat = [k for k, ci in ci95.items() if ci["n_valid"] and ci["low"] == ci["high"]]
    if not flat:
        return ""
    one_class = int(sum(M.bootstrap_samples(lambda yt, yp: len(np.unique(yp)) == 1, [y_true, y_pred],
                                            n_bootstrap, seed, strata=y_true)))
    why = (f"the model predicts one class in {one_class} of {n_bootstrap} resamples" if one_class
           else "every resample scores the same")
    return f"interval degenerate: {why} (zero-width 95% CI of {', '.join(flat)})"


def partial_ci_notes(name: str, block: Mapping, n_bootstrap: int) -> List[str]:
    """One note per CI that rests on fewer than ``n_bootstrap`` resamples (the others undefined), and the
    block's ``ci_note`` (zero-width CIs)."""
    notes = [f"{name}: {metric} 95% CI from {ci['n_valid']} of {n_bootstrap} resamples (the others undefined)"
             for metric, ci in (block.get("ci95") or {}).items() if ci["n_valid"] < n_bootstrap]
    return notes + ([f"{name}: {block['ci_note']}"] if block.get("ci_note") else [])


def load_thresholds(path: str) -> Dict[str, dict]:
    """target -> {"threshold", ...} from a thresholds.json (written by ``--threshold_tuning`` or by hand)."""
    try:
        data = read_json(path)
        return {str(k): dict(v) for k, v in data["targets"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise EvaluationError(f"{path}: not a thresholds file ({e})") from None


def threshold_predictions(target: Target, entry: Mapping, probs: np.ndarray, source: str) -> np.ndarray:
    """Class indices from ``p(positive) >= threshold`` (binary targets; positive = last class)."""
    if len(target.classes) != 2:
        raise EvaluationError(f"{source}: threshold for {target.name!r}, which is not a binary target")
    if entry.get("positive_class", target.classes[-1]) != target.classes[-1]:
        raise EvaluationError(f"{source}: positive class {entry['positive_class']!r} of {target.name!r} "
                              f"is not {target.classes[-1]!r}")
    return (probs[:, 1] >= float(entry["threshold"])).astype(np.int64)


def tune(target: Target, yt, probs, method: str, block: dict) -> dict:
    """Tune on this set; report the scores at that threshold (optimistic: same cases)."""
    try:
        thr, score = M.tune_threshold(yt == 1, probs[:, 1], method)
    except ValueError as e:
        block["threshold_tuning_note"] = str(e)
        return {}
    yp = (probs[:, 1] >= thr).astype(np.int64)
    block["at_tuned_threshold"] = {"threshold": thr, "note": "tuned on this same set: optimistic",
                                   **M.scores_from_confusion(M.confusion_matrix(yt, yp, 2))}
    return {"threshold": thr, "method": method, "score": score, "positive_class": target.classes[-1]}


def score_classification(target: Target, yt: np.ndarray, yp: np.ndarray, probs: np.ndarray, n_bootstrap: int,
                         seed: int, threshold: Optional[Mapping] = None, threshold_source: str = "",
                         tuning: Optional[str] = None) -> Tuple[dict, np.ndarray, dict]:
    """(metrics block, the predictions scored, tuned threshold entry or {}) of one target.

    ``threshold`` replaces the argmax decision; ``tuning`` ('youden' | 'f1') tunes a binary threshold."""
    decision = "argmax"
    if threshold is not None:
        yp = threshold_predictions(target, threshold, probs, threshold_source)
        decision = f"p({target.classes[-1]}) >= {float(threshold['threshold'])} from {threshold_source}"
    block = classification_block(target, yt, yp, probs, n_bootstrap, seed)
    block["decision"] = decision
    tuned = tune(target, yt, probs, tuning, block) if tuning and len(target.classes) == 2 else {}
    return block, yp, tuned


def per_case_columns(name: str) -> List[str]:
    return [f"{name}_true", f"{name}_pred", f"{name}_correct"]


def per_case_values(target: Target, y_true: int, y_pred: int) -> dict:
    return dict(zip(per_case_columns(target.name),
                    (target.classes[y_true], target.classes[y_pred], int(y_true == y_pred))))


def report_rows(name: str, block: Mapping) -> List[dict]:
    """classification_report.csv rows of one target: one per class, then the macro average."""
    rows = [{"target": name, "class": cls, **s} for cls, s in block["per_class"].items()]
    s = M.per_class_scores(np.asarray(block["confusion_matrix"]))
    occurring = (s["support"] > 0) | (s["predicted"] > 0)
    rows.append({"target": name, "class": "macro avg", "precision": _mean(s["precision"][occurring]),
                 "recall": _mean(s["recall"][occurring]), "f1": block["macro_f1"], "support": block["n"]})
    return rows


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else M.NAN
