"""The whole job as library steps: prepare (convert, plan, preprocess, split), train, infer, evaluate.

``pipeline.py`` is a thin CLI over these. Each step records what it produced in
``<base_dir>/nnunet_mtl_pipeline.json`` so a later step (or a later run with
``--train_only`` / ``--inference_only``) continues from it. Re-running a finished step skips
it; nothing the user produced is deleted.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import torch
from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

from nnunet_mtl.calibration.conformal_store import DEFAULT_COVERAGE
from nnunet_mtl.calibration.evaluation import validation_calibration
from nnunet_mtl.conversion.detect import convert
from nnunet_mtl.conversion.lateral_pairs import choose_trainer_for
from nnunet_mtl.dataset_spec import DatasetSpec
from nnunet_mtl.evaluation.evaluate import evaluate
from nnunet_mtl.evaluation.report import json_safe
from nnunet_mtl.conversion.file_names import VALIDATED_WEIGHTS, predicted_mask, trained_folds
from nnunet_mtl.inference.folders import converted_source, predict_folder
from nnunet_mtl.inference.loader import ModelFolderError, check_model_folder, load_predictor
from nnunet_mtl.inference.openvino_backend import BackendError
from nnunet_mtl.io_utils import atomic_write_json, read_json
from nnunet_mtl.model.network import unet_weights_hash
from nnunet_mtl.outputs import clinical as clinical_outputs
from nnunet_mtl.planning import add_trainer_path, plan_and_preprocess, plans_identifier, use_base_dir
from nnunet_mtl.targets import load_spec_file
from nnunet_mtl.training import fitting, fold_runs
from nnunet_mtl.training.knobs import DEFAULT_HEADS, HEADS_CHOICES, knob_overrides
from split_tools.splits import make_splits, write_splits

STATE_FILE = "nnunet_mtl_pipeline.json"


class PipelineError(RuntimeError):
    """A step cannot run; the message says what to fix."""


@dataclass
class PipelineState:
    dataset_id: int
    dataset_name: str
    raw_folder: str
    configuration: str
    plans: str
    trainer: str
    folds: List[int] = field(default_factory=list)

    @property
    def dataset_folder_name(self) -> str:
        return os.path.basename(self.raw_folder)


def state_path(base_dir: str) -> str:
    return os.path.join(base_dir, STATE_FILE)


def load_state(base_dir: str) -> PipelineState:
    path = state_path(base_dir)
    if not os.path.isfile(path):
        raise PipelineError(f"{path}: not found; run the preparation step first (pipeline.py --prepare_only ...)")
    return PipelineState(**read_json(path))


def save_state(base_dir: str, state: PipelineState) -> None:
    atomic_write_json(state_path(base_dir), asdict(state))


# --------------------------------------------------------------------------------------------- prepare
def detect_configuration(raw_folder: str) -> str:
    """2d for 2D images (radiographs), 3d_fullres for volumes."""
    import SimpleITK as sitk
    first = sorted(glob.glob(os.path.join(raw_folder, "imagesTr", "*")))
    if not first:
        raise PipelineError(f"{raw_folder}/imagesTr: no images")
    reader = sitk.ImageFileReader()
    reader.SetFileName(first[0])
    reader.ReadImageInformation()
    return "2d" if reader.GetDimension() == 2 or 1 in reader.GetSize() else "3d_fullres"


def choose_trainer(description: DatasetSpec, requested: Optional[str]) -> str:
    """The user's trainer, or the orientation-aware one when labels are lateralised (printed)."""
    if requested:
        return requested
    name, message = choose_trainer_for(description, base="nnUNetTrainerMTL")
    if message:
        print(message)
    return name


def prepare(base_dir: str, input_dir: str, dataset_id: int, dataset_name: Optional[str] = None,
            planner: str = "resenc_m", configuration: Optional[str] = None, trainer: Optional[str] = None,
            split_mode: Optional[str] = None, n_folds: int = 5, split_target: Optional[str] = None,
            seed: int = 12345, num_processes: int = 2, overwrite: bool = False, shrink: Optional[dict] = None,
            convert_kwargs: Optional[dict] = None) -> PipelineState:
    """Convert the user's data, plan + preprocess with nnU-Net, write the split; returns the state."""
    paths = use_base_dir(base_dir)
    name = dataset_name or _safe_name(os.path.basename(os.path.abspath(input_dir)))
    raw_folder = convert(input_dir, paths["nnUNet_raw"], dataset_id, name, overwrite=overwrite,
                         **(convert_kwargs or {}))
    dataset_json = read_json(os.path.join(raw_folder, "dataset.json"))
    description = DatasetSpec.from_dataset_json(dataset_json, source=os.path.join(raw_folder, "dataset.json"))
    configuration = configuration or detect_configuration(raw_folder)
    plans_name = plans_identifier(planner)
    pre_folder = os.path.join(paths["nnUNet_preprocessed"], os.path.basename(raw_folder))
    mode = split_mode or ("fixed" if description.fixed_validation else "stratified")
    # from the converted dataset.json (planning copies it): --folds 20 with 12 cases, or a grouped split
    # without patients, is refused now rather than after minutes of planning
    splits = make_splits(os.path.join(raw_folder, "dataset.json"), mode=mode, n_folds=n_folds, target=split_target,
                         seed=seed)
    if _preprocessed_complete(pre_folder, plans_name, configuration, dataset_json) and not overwrite:
        print(f"{pre_folder}: already planned and preprocessed ({plans_name}, {configuration}); skipping")
    else:
        plan_and_preprocess(dataset_id, planner, (configuration,), num_processes=num_processes, shrink=shrink)
    write_splits(splits, pre_folder, overwrite=overwrite)
    state = PipelineState(dataset_id, name, raw_folder, configuration, plans_name,
                          choose_trainer(description, trainer), list(range(len(splits))))
    save_state(base_dir, state)
    return state


def _safe_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in text).strip("_")
    return cleaned or "MTL"


def _preprocessed_complete(pre_folder: str, plans_name: str, configuration: str, dataset_json: dict) -> bool:
    plans_path = os.path.join(pre_folder, plans_name + ".json")
    if not os.path.isfile(plans_path):
        return False
    plans = read_json(plans_path)
    conf = plans["configurations"].get(configuration)
    if conf is None:
        return False
    data_dir = os.path.join(pre_folder, conf.get("data_identifier", ""))
    n_done = len(glob.glob(os.path.join(data_dir, "*.pkl")))
    return n_done >= int(dataset_json.get("numTraining", 0)) > 0


# --------------------------------------------------------------------------------------------- train
def model_folder(base_dir: str, state: PipelineState) -> str:
    return os.path.join(base_dir, "nnUNet_results", state.dataset_folder_name,
                        f"{state.trainer}__{state.plans}__{state.configuration}")


def train(base_dir: str, folds: Optional[Sequence] = None, device: str = "cuda", num_gpus: int = 1,
          overwrite: bool = False, engine: str = "local", ray_address: Optional[str] = None,
          ray_workers: Optional[int] = None, **knobs) -> str:
    """Train the given folds (default: all of the split). A finished fold is skipped; an interrupted
    one resumes from its newest checkpoint (final, latest, else best, as nnU-Net's continue mode
    looks for them). Knobs (epochs, lr, schedule...) go to the trainer. ``engine='ray'``: every fold as one Ray
    task on the cluster at ``ray_address`` (or a local one), ``ray_workers`` folds at a time on CPUs
    (``training.fold_runs``); otherwise one after the other here."""
    state = load_state(base_dir)
    use_base_dir(base_dir)
    folder = model_folder(base_dir, state)
    folds = state.folds if folds is None else list(folds)
    unknown = [f for f in folds if f not in state.folds]
    if unknown:  # nnU-Net would silently make a random 80:20 split for a fold beyond splits_final.json
        raise PipelineError(f"fold {unknown[0]} does not exist in this dataset's split (folds: {state.folds})")
    runs = [run for run in (_fold_run(state, folder, fold, overwrite) for fold in folds) if run is not None]
    if engine == "ray":
        try:
            fold_runs.run_folds_on_ray(runs, device, num_gpus, knobs, ray_address, ray_workers)
        except fold_runs.FoldRunError as e:
            raise PipelineError(str(e)) from None
        return folder
    with knob_overrides(**knobs):
        for run in runs:
            fold_runs.run_fold(run, device, num_gpus)
    return folder


def _fold_run(state: PipelineState, folder: str, fold: int, overwrite: bool) -> Optional[fold_runs.FoldRun]:
    """What a fold needs: nothing (trained and validated with its current weights), its validation alone (the
    checkpoint was replaced), or training (resumed from its newest checkpoint unless ``overwrite``)."""
    fold_dir = os.path.join(folder, f"fold_{fold}")
    run = fold_runs.FoldRun(state.dataset_id, state.configuration, state.trainer, state.plans, fold, fold_dir)
    finished = os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth"))
    validated = os.path.isfile(os.path.join(fold_dir, "validation", "mtl_summary.json"))
    if finished and validated and not overwrite:
        if _validated_current(fold_dir):
            print(f"{fold_dir}: already trained and validated; skipping (--overwrite retrains)")
            return None
        print(f"{fold_dir}: validation/ is from other weights than checkpoint_final.pth (the checkpoint was "
              f"replaced); validating again")
        return replace(run, resume=True, validation_only=True)
    return replace(run, resume=not overwrite and _resume_message(fold_dir))


def _resume_message(fold_dir: str) -> bool:
    """Whether a fold has a checkpoint to continue from; says which one (never restarts silently)."""
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if os.path.isfile(os.path.join(fold_dir, name)):
            if name == "checkpoint_best.pth":
                print(f"{fold_dir}: no checkpoint_latest.pth; resuming from {name} (the best epoch so far; "
                      f"--overwrite starts again from scratch)")
            else:
                print(f"{fold_dir}: resuming from {name}")
            return True
    return False


def _validated_current(fold_dir: str) -> bool:
    """Whether validation/ ran with checkpoint_final.pth's U-Net (a folder validated before this was recorded
    counts as current)."""
    record = os.path.join(fold_dir, "validation", VALIDATED_WEIGHTS)
    if not os.path.isfile(record):
        return True
    weights = torch.load(os.path.join(fold_dir, "checkpoint_final.pth"), map_location="cpu",
                         weights_only=False)["network_weights"]
    return read_json(record).get("unet_sha256") == unet_weights_hash(weights)


def _stale_folds(folder: str, folds: Sequence[int]) -> List[int]:
    """Folds whose checkpoint_final.pth is not the one their validation ran with or their heads were fitted on
    (the file was replaced): predicting with them would use stale heads and temperatures."""
    stale = []
    for f in folds:
        fold_dir = os.path.join(folder, f"fold_{f}")
        ckpt = torch.load(os.path.join(fold_dir, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
        current = unet_weights_hash(ckpt["network_weights"])
        record = os.path.join(fold_dir, "validation", VALIDATED_WEIGHTS)
        validated = read_json(record).get("unet_sha256") if os.path.isfile(record) else current
        fitted = (fitting.fitted_info(ckpt) or {}).get("unet_sha256", current)
        if validated != current or fitted != current:
            stale.append(f)
    return stale


# --------------------------------------------------------------------------------------------- heads

def fit_heads(base_dir: str, folds: Optional[Sequence] = None, device: str = "cuda", overwrite: bool = False,
              checkpoint: str = "checkpoint_final.pth", backend: str = "auto") -> dict:
    """Heads fitted in closed form on the trained model's pooled whole-case features, per fold on that fold's
    training cases, written into the model's checkpoints (``training.fitting``): the accuracy benchmark found
    them above the heads trained by gradient (docs/benchmarks.md). Masks stay the model's; folds fitted from
    the same weights, labels and split are kept."""
    state = load_state(base_dir)
    use_base_dir(base_dir)
    folder = model_folder(base_dir, state)
    folds = _trained(folder, folds, checkpoint)
    try:
        return fitting.fit_heads(folder, folds=folds, checkpoint=checkpoint, device=device, backend=backend,
                                 overwrite=overwrite)
    except (fitting.FittingError, ValueError) as e:
        raise PipelineError(f"fitting heads: {e} (the trained model is kept; --heads trained uses the heads trained "
                            f"with it)") from None


def add_heads(base_dir: Optional[str], model_dir: str, out_dir: str, labels_csv: Optional[str] = None,
              spec_json: Optional[str] = None, device: str = "cuda", overwrite: bool = False, **kwargs) -> dict:
    """Heads fitted on a trained nnU-Net model (stock, or ours) into the model folder ``out_dir``, whose U-Net
    weights are the model's own (``training.fitting``). ``base_dir`` holds the model's ``nnUNet_preprocessed``
    (its split and preprocessed cases); None keeps the nnU-Net folder variables already set."""
    if base_dir is not None:
        use_base_dir(base_dir)
    add_trainer_path()  # the model may be one of ours, or any trainer nnU-Net finds
    spec = load_spec_file(spec_json) if spec_json else None
    summary = fitting.fit_heads(model_dir, out_dir, labels_csv, spec, device=device, overwrite=overwrite, **kwargs)
    print(f"{out_dir}: model with heads fitted on {model_dir}; out-of-fold validation: {summary.get('headline', '')}")
    return summary


def _trained(folder: str, folds: Optional[Sequence], checkpoint: str) -> List[int]:
    """The folds asked for (default: every fold holding ``checkpoint``), each checked to hold it."""
    folds = list(folds) if folds else trained_folds(folder, checkpoint)
    if not folds:
        raise PipelineError(f"{folder}: no fold has a {checkpoint}; run --train_only first")
    missing = [f for f in folds if not os.path.isfile(os.path.join(folder, f"fold_{f}", checkpoint))]
    if missing:
        raise PipelineError(f"{folder}: fold {missing[0]} has no {checkpoint}; run --train_only --fold {missing[0]} "
                            f"first")
    return folds


def unfitted_folds(folder: str, folds: Sequence[int], checkpoint: str = "checkpoint_final.pth") -> List[int]:
    """The folds whose checkpoint holds heads trained with the network (not fitted)."""
    return [f for f in folds if fitting.fitted_info(torch.load(os.path.join(folder, f"fold_{f}", checkpoint),
                                                               map_location="cpu", weights_only=False)) is None]


# --------------------------------------------------------------------------------------------- infer
def infer(base_dir: str, test_input: Optional[str] = None, test_output: Optional[str] = None,
          folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth", device: str = "cuda",
          overwrite: bool = False, explain: bool = False, calibration: bool = True,
          dicom_outputs: Optional[str] = None, report: bool = False, model_dir: Optional[str] = None,
          heads: str = DEFAULT_HEADS, backend: str = "auto", coverage: float = DEFAULT_COVERAGE,
          interval_tolerance: Optional[Dict[str, float]] = None, **predict_kwargs) -> str:
    """Masks + predictions.csv for a folder of test images (default: the dataset's imagesTs).

    ``model_dir``: predict with this model folder (one trained by the pipeline or ``nnUNetv2_train``, or one of
    ``nnunet_mtl_add_heads``) instead of the model trained in ``base_dir`` (which then needs no pipeline state);
    ``heads='fitted'``: folds of the base_dir model whose heads are not fitted yet get them first;
    ``calibration``: apply the folds' temperatures (``fold_X/calibration.json``) when they exist (without them, no
    conformal sets either: their scores are of calibrated probabilities);
    ``coverage``, ``interval_tolerance``: the conformal sets' coverage and the widest interval per regression
    target not flagged for review (``fold_X/conformal.json``; ``nnUNetPredictorMTL.set_review``);
    ``backend``: what runs the network ('auto': OpenVINO on the CPU, see ``inference.openvino_backend``);
    ``dicom_outputs`` ('binary' | 'fractional'): DICOM SEG + SR for DICOM inputs under ``dicom/``;
    ``report``: review pages under ``report/`` (with the Grad-CAM overlays when ``explain``);
    ``mask_format`` ('input' | 'nifti', in ``predict_kwargs``): see ``inference.folders.predict_folder``."""
    if heads not in HEADS_CHOICES:
        raise PipelineError(f"heads must be one of {HEADS_CHOICES}, got {heads!r}")
    folder, raw_folder = _inference_model(base_dir, model_dir)
    if test_input is None and raw_folder is None:
        raise PipelineError("--test_input is required with --model_dir when BASE_DIR holds no prepared dataset")
    test_input = test_input or os.path.join(raw_folder, "imagesTs")
    if os.path.isfile(test_input):  # checked before heads are fitted (minutes)
        raise PipelineError(f"{test_input}: is a file, not a folder; --test_input takes a folder of test images")
    if not os.path.isdir(test_input):
        raise PipelineError(f"{test_input}: test input folder not found (give --test_input)")
    if model_dir is None:
        folds = _trained(folder, folds, checkpoint)  # before anything reads a checkpoint (fitting heads does)
        stale = _stale_folds(folder, folds) if checkpoint == "checkpoint_final.pth" else []
        if stale:
            raise PipelineError(f"{folder}: checkpoint_final.pth of fold(s) {stale} was replaced after its validation "
                                f"and head fitting; run --train_only --fold {stale[0]} (it validates the new weights "
                                f"and fits the heads again), then --inference_only")
        unfitted = unfitted_folds(folder, folds, checkpoint)
        if heads == "fitted" and unfitted:
            print(f"{folder}: fitting heads on folds {unfitted} first (--heads trained predicts with the heads "
                  f"trained with the network)")
            fit_heads(base_dir, folds, device, checkpoint=checkpoint, backend=backend)
        elif heads == "trained" and set(folds) - set(unfitted):
            raise PipelineError(f"{folder}: the heads of folds {sorted(set(folds) - set(unfitted))} were fitted after "
                                f"training (--heads fitted), so the heads trained with the network are gone; "
                                f"predict with the fitted heads, or retrain with --heads trained --overwrite")
    else:
        try:  # the loader's lines: not a model folder, a stock model, which fold lacks the checkpoint
            check_model_folder(folder, checkpoint, folds)
        except ModelFolderError as e:
            raise PipelineError(str(e)) from None
        folds = list(folds) if folds else trained_folds(folder, checkpoint)
    test_output = test_output or os.path.join(base_dir, "predictions")
    if dicom_outputs == "fractional":
        predict_kwargs["save_probabilities"] = True  # the SEG's fractions are nnU-Net's class probabilities
    try:
        predictor = load_predictor(folder, folds, checkpoint, device, step_size=predict_kwargs.pop("step_size", 0.5),
                                   use_mirroring=predict_kwargs.pop("use_mirroring", True), backend=backend)
    except (ModelFolderError, BackendError) as e:
        raise PipelineError(str(e)) from None
    if not calibration:
        predictor.calibration = None
    try:
        predictor.set_review(coverage, interval_tolerance, calibrated=calibration)
    except ValueError as e:
        predictor.close()
        raise PipelineError(str(e)) from None
    with contextlib.closing(predictor):
        csv_path = predict_folder(predictor, test_input, test_output, overwrite=overwrite, **predict_kwargs)
    print(f"{test_output}: masks and {os.path.basename(csv_path)} (folds {folds}, {predictor.backend}; probabilities "
          f"{'calibrated' if predictor.outputs_calibrated else 'not calibrated'})")
    source = converted_source(test_input, test_output)
    clinical_outputs.retire_unrequested(test_output, {clinical_outputs.EXPLANATIONS_DIR: explain,
                                                      clinical_outputs.DICOM_DIR: bool(dicom_outputs),
                                                      clinical_outputs.REPORT_DIR: report})
    if explain:
        explain_folder(folder, source, os.path.join(test_output, clinical_outputs.EXPLANATIONS_DIR),
                       folds, checkpoint, device, prediction_folder=test_output)
    if dicom_outputs:
        clinical_outputs.write_dicom_folder(folder, test_output, dicom_outputs)
    if report:
        clinical_outputs.write_report_folder(folder, test_output, source)
    return csv_path


def _inference_model(base_dir: str, model_dir: Optional[str]):
    """(model folder, raw dataset folder or None): ``model_dir`` as given, else the model trained in base_dir.
    With ``model_dir`` the nnU-Net folder variables are left as they are (only our trainers are added)."""
    if model_dir is None:
        if not os.path.isfile(state_path(base_dir)):  # load_state's line would send the user to one step only
            raise PipelineError(f"{base_dir}: holds no prepared dataset or trained model ({STATE_FILE} not found); "
                                f"run --prepare_only and --train_only first, or give --model_dir")
        state = load_state(base_dir)
        use_base_dir(base_dir)
        return model_folder(base_dir, state), state.raw_folder
    if not os.path.isdir(model_dir):
        raise PipelineError(f"{model_dir}: model folder not found (--model_dir)")
    add_trainer_path()
    raw_folder = load_state(base_dir).raw_folder if os.path.isfile(state_path(base_dir)) else None
    return os.path.abspath(model_dir), raw_folder


def explain_folder(model_dir: str, source_folder: str, out_dir: str, folds, checkpoint: str, device: str,
                   prediction_folder: Optional[str] = None) -> List[str]:
    """Grad-CAM maps and overlays for every case of an nnU-Net-format input folder, per classification
    target, for the predicted class (outlined with the predicted mask when there is one)."""
    from nnunet_mtl.outputs.explain import explain_case, load_predictor as explain_predictor  # grad-cam: on use
    predictor = explain_predictor(model_dir, folds, checkpoint, device)  # loaded once for all cases
    file_ending = predictor.dataset_json["file_ending"]
    targets = [t.name for t in predictor.spec if t.is_classification]
    written = []
    for files in create_lists_from_splitted_dataset_folder(source_folder, file_ending):
        case_id = os.path.basename(files[0])[:-(len(file_ending) + 5)]
        mask = predicted_mask(prediction_folder, case_id, file_ending) if prediction_folder else None
        for target in targets:
            paths = explain_case(model_dir, files, os.path.join(out_dir, case_id), target, folds=folds,
                                 checkpoint=checkpoint, device=device, predictor=predictor, mask_file=mask)
            written.extend(paths.values())
    return written


# --------------------------------------------------------------------------------------------- evaluate
def evaluate_validation(base_dir: str, fold: int, output_folder: Optional[str] = None,
                        n_bootstrap: int = 1000) -> dict:
    """Score one fold's whole-case validation (masks + the heads in its checkpoint) with nnunet_mtl.evaluation.

    The validation table holds raw probabilities of the fold's heads (fitted or trained: ``metrics.json`` says
    which, ``heads``). When the fold has a ``calibration.json``, each classification target's block gains
    ``calibration_fitted``: ECE / Brier raw and with the fold's temperature, and ``reliability_<target>.png``
    shows both curves; that temperature was fitted on these same cases, so the calibrated scores are
    optimistic (a note in ``metrics.json`` says so)."""
    state = load_state(base_dir)
    use_base_dir(base_dir)
    fold_dir = os.path.join(model_folder(base_dir, state), f"fold_{fold}")
    val_dir = os.path.join(fold_dir, "validation")
    csv_path = os.path.join(val_dir, "predictions.csv")
    if not os.path.isfile(csv_path):
        raise PipelineError(f"{val_dir}: no whole-case validation yet; train fold {fold} first")
    dataset_json = read_json(os.path.join(state.raw_folder, "dataset.json"))
    case_ids = [os.path.basename(p)[:-len(dataset_json["file_ending"])]
                for p in glob.glob(os.path.join(val_dir, "*" + dataset_json["file_ending"]))]
    output_folder = output_folder or os.path.join(base_dir, f"evaluation_fold{fold}")
    gt_dir = os.path.join(output_folder, ".gt")
    os.makedirs(gt_dir, exist_ok=True)
    for cid in case_ids:  # the ground truth of exactly the validation cases
        src = os.path.join(state.raw_folder, "labelsTr", cid + dataset_json["file_ending"])
        dst = os.path.join(gt_dir, os.path.basename(src))
        if not os.path.exists(dst):
            shutil.copyfile(src, dst)
    description = DatasetSpec.from_dataset_json(dataset_json)
    has_masks = description.has_masks
    result = evaluate(gt_dir=gt_dir if has_masks else None, pred_dir=val_dir if has_masks else None,
                      prediction_csv=csv_path, output_folder=output_folder, labels=description.table,
                      regions=dict(description.regions), n_bootstrap=n_bootstrap,
                      label_names=dict(description.label_names))
    summary_path = os.path.join(val_dir, "mtl_summary.json")
    result["heads"] = read_json(summary_path).get("heads", "trained") if os.path.isfile(summary_path) else "trained"
    fitted = validation_calibration(fold_dir, csv_path, description.targets, description.table, output_folder,
                                    n_bootstrap)
    if fitted:
        for name, block in fitted.items():
            result.get("classification", {}).get(name, {})["calibration_fitted"] = json_safe(block)
        result["notes"].append(f"calibration: fold_{fold}/calibration.json was fitted on these validation cases, so "
                               f"their calibrated ECE/Brier are optimistic; this table holds raw probabilities, so a "
                               f"threshold tuned on it applies to raw probabilities (calibrate_threshold moves it "
                               f"onto the calibrated scale of the test predictions)")
    atomic_write_json(os.path.join(output_folder, "metrics.json"), result)  # evaluate's, with the heads scored
    return result
