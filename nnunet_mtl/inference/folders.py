"""Inference API: load a trained model folder, bring inputs into nnU-Net's format, predict.

Inputs may already be in nnU-Net's layout (``CASE_0000.nii.gz``) or be what users hold:
PNG/JPG/DICOM radiographs, NIfTI volumes with any name, DICOM series folders. Those are
converted with the same readers used for training data (same percentile clipping, same
MONOCHROME1 handling), so test images are treated exactly like training images.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from tqdm import tqdm

from nnunet_mtl import case_checks
from nnunet_mtl.conversion.case_discovery import NOT_IMAGES
from nnunet_mtl.conversion.inference_inputs import ModelInputs, PreparedInputs, prepare_cases
from nnunet_mtl.conversion.masks import ConversionError
from nnunet_mtl.cluster import session as ray_cluster
from nnunet_mtl.inference import provenance, ray_engine
from nnunet_mtl.inference.file_heads import heads_of_files
from nnunet_mtl.inference.loader import model_inputs
from nnunet_mtl.inference.masks import DEFAULT_MASK_FORMAT, MASK_FORMATS, mask_ending, to_mask_format
from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from nnunet_mtl.inference.record import (PROVENANCE_NAME, PredictionRecord, remove_case_files, replace_case_files,
                                         table_case_ids)
from nnunet_mtl.inference.threaded_engine import run_cases
from nnunet_mtl.inference.writer_lock import exclusive_writer
from nnunet_mtl.io_utils import read_json

STAGING_PREFIX = ".incoming_part"  # nnU-Net exports here; finished masks are moved into place
NNUNET_NAME = re.compile(r"^(.+)_(\d{4})\.nii\.gz$")


def _is_nnunet_input_folder(folder: str) -> bool:
    """Only ``CASE_XXXX.nii.gz`` images (side files like notes.txt aside): nnU-Net can read it as it is."""
    files = [f for f in os.listdir(folder) if not f.startswith(".")]
    images = [f for f in files if os.path.isdir(os.path.join(folder, f)) or not f.lower().endswith(NOT_IMAGES)]
    return bool(images) and all(NNUNET_NAME.match(f) and os.path.isfile(os.path.join(folder, f)) for f in images)


def prepare_inputs(inputs: Sequence[str], work_dir: str, clip_percentiles=(0.5, 98.5),
                   model: Optional[ModelInputs] = None, force: bool = False) -> Dict[str, str]:
    """Files/folders -> {case_id: path of CASE_0000.nii.gz}; converts non-nnU-Net inputs into work_dir.

    ``model`` (``model_inputs(predictor)``) checks channel count and dimensionality and writes colour
    images as R, G, B channel files for colour models; without it every file is one grey channel.
    Conversions are reused while their source is unchanged (``conversions.json`` in work_dir);
    ``force`` reconverts all; conversions of inputs not given are removed. See ``prepare_folder``
    for every channel file and what was done."""
    prepared = prepare_cases(inputs, work_dir, model, clip_percentiles, force)
    return {cid: files[0] for cid, files in prepared.cases.items()}


def prepare_folder(input_dir: str, output_dir: str, model: Optional[ModelInputs] = None,
                   clip_percentiles=(0.5, 98.5), force: bool = False) -> PreparedInputs:
    """Check a test folder against the model and bring it into nnU-Net's format (``PreparedInputs``:
    the folder nnU-Net reads, per case its files and sources, what was converted, reused, removed).
    An empty folder, duplicate case names, unsupported files, a channel or dimensionality mismatch
    are one-line ``ConversionError``s naming the file."""
    return prepare_cases(list_inputs(input_dir), converted_source(input_dir, output_dir), model, clip_percentiles,
                         force, where=input_dir)


def list_inputs(input_dir: str) -> List[str]:
    if not os.path.isdir(input_dir):
        raise ConversionError(f"{input_dir}: input folder not found")
    return sorted(os.path.join(input_dir, f) for f in os.listdir(input_dir) if not f.startswith("."))


ENGINES = ("threads", "processes", "ray")
CONVERTED_INPUTS = ".converted_inputs"


def converted_source(input_dir: str, output_dir: str) -> str:
    """Where nnU-Net reads the inputs from: the input folder itself, or its converted copy."""
    if _is_nnunet_input_folder(input_dir):
        return input_dir
    return os.path.join(output_dir, CONVERTED_INPUTS)


def predict_folder(predictor: nnUNetPredictorMTL, input_dir: str, output_dir: str, overwrite: bool = False,
                   save_probabilities: bool = False, num_processes_preprocessing: int = 2,
                   num_processes_export: int = 2, num_parts: int = 1, part_id: int = 0,
                   clip_percentiles=(0.5, 98.5), engine: str = "threads",
                   report: Callable[[str], None] = print, mask_format: str = DEFAULT_MASK_FORMAT,
                   ray_address: Optional[str] = None, ray_workers: Optional[int] = None) -> str:
    """Masks (nnU-Net layout) + predictions.csv/json in output_dir; returns the CSV path.

    A case counts as done only with its mask and a row from this model (checkpoints, step size,
    mirroring, aggregation) and this input (``prediction_provenance``); every other case of this part
    is predicted and its row recorded as it finishes (``prediction_merge``), so a killed run resumes where
    it stopped. Results are replaced case by case, never removed first: nnU-Net exports into a staging folder,
    the finished mask is moved over the old one (one rename), then its row is recorded; a run that fails
    publishes the table of what is consistent (every row with its mask, all from this model) and says what is
    left. One run writes a folder at a time (``writer_lock``; ``-num_parts`` processes each their part).
    Masks and rows of inputs that are gone are removed; ``report`` gets one line: N predicted, M kept, K
    removed. ``overwrite`` reconverts and predicts everything. ``engine='threads'`` runs in-process
    (threaded_engine); ``'processes'`` uses nnU-Net's multiprocessing ``predict_from_files`` (rows recorded as
    each case's export finishes, ``nnUNetPredictorMTL.predict_from_data_iterator``); ``'ray'`` runs the cases on
    Ray Data actors (``ray_engine``: ``ray_workers`` of them, on the cluster at ``ray_address`` or a local one;
    model, inputs and output on storage all nodes share), the record kept here as for the others. ``mask_format``
    'input': masks of PNG/JPG/BMP/TIFF inputs come back as PNG (``mask_outputs``); 'nifti': all in the
    model's format. A case whose mask is not in the asked format is predicted again."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        ray_cluster.require_ray()
    elif ray_address is not None or ray_workers is not None:
        raise ValueError(f"ray_address and ray_workers are for engine 'ray', not {engine!r}")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"-part_id {part_id} is outside -num_parts {num_parts} (part ids are 0 to {num_parts - 1})")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"{output_dir}: output folder is a file")
    with exclusive_writer(output_dir, num_parts, part_id):
        return _predict_folder(predictor, input_dir, output_dir, overwrite, save_probabilities,
                               num_processes_preprocessing, num_processes_export, num_parts, part_id,
                               clip_percentiles, engine, report, mask_format, ray_address, ray_workers)


def _predict_folder(predictor, input_dir, output_dir, overwrite, save_probabilities, num_processes_preprocessing,
                    num_processes_export, num_parts, part_id, clip_percentiles, engine, report, mask_format,
                    ray_address, ray_workers) -> str:
    prepared = prepare_folder(input_dir, output_dir, model_inputs(predictor), clip_percentiles, force=overwrite)
    file_ending = predictor.dataset_json["file_ending"]
    endings = {cid: mask_ending(sources, file_ending, mask_format) for cid, sources in prepared.sources.items()}
    identity = provenance.model_identity(predictor)
    key = provenance.model_key(identity)
    record = PredictionRecord(output_dir, predictor.spec)
    latest = record.latest()
    inputs = provenance.input_identities(prepared, {cid: e["input"] for cid, e in latest.items()})

    gone = sorted((set(latest) | set(table_case_ids(output_dir))) - set(inputs))
    for cid in gone:
        remove_case_files(output_dir, cid, file_ending)
    if gone:
        record.remove(gone)

    def valid(cid: str, entry: dict) -> bool:
        return (cid in inputs and entry["model"] == key and provenance.same_input(entry["input"], inputs[cid])
                and os.path.isfile(os.path.join(output_dir, cid + endings[cid]))
                and (not save_probabilities or os.path.isfile(os.path.join(output_dir, cid + ".npz"))))

    mine = sorted(inputs)[part_id::num_parts]
    todo = [cid for cid in mine
            if overwrite or cid in prepared.converted or cid not in latest or not valid(cid, latest[cid])]
    changed = _model_changes(output_dir, identity, latest, key, inputs)
    staging = os.path.join(output_dir, f"{STAGING_PREFIX}{part_id}of{num_parts}")
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's half exports: this part's, under its lock
    os.makedirs(staging)
    done: List[str] = []
    progress = CaseProgress(len(todo), f"predicting into {output_dir}")

    def finished(ofile: str, heads) -> None:
        cid = os.path.basename(ofile)
        staged = to_mask_format(staging, cid, file_ending, endings[cid], prepared.sources[cid][0])
        replace_case_files(output_dir, cid, staged, file_ending)  # the new mask first, then its row:
        outputs = {**predictor.calibrated_outputs(heads.outputs),  # with the image against the fingerprint
                   **predictor.checks.of_files(prepared.cases[cid], predictor.plans_manager.image_reader_writer_class)}
        record.append(cid, outputs, key, inputs[cid], calibrated=predictor.outputs_calibrated,  # never an old mask
                      review=predictor.review_columns(outputs))                                  # with a new row
        flagged = case_checks.warning(cid, outputs)
        if flagged:
            print(flagged, file=sys.stderr, flush=True)
        done.append(cid)
        progress.step(cid)

    lists = [prepared.cases[cid] for cid in todo]
    ofiles = [os.path.join(staging, cid) for cid in todo]
    provenance_of_run = {"model_key": key, "model": identity}
    try:
        if todo and engine == "threads":
            run_cases(predictor, lists, ofiles, save_probabilities, export_threads=num_processes_export,
                      preprocess_threads=num_processes_preprocessing, on_case_done=finished)
        elif todo and engine == "ray":
            ray_engine.run_cases(predictor, lists, ofiles, save_probabilities, export_threads=num_processes_export,
                                 preprocess_threads=num_processes_preprocessing, on_case_done=finished,
                                 address=ray_address, workers=ray_workers)
        elif todo:
            predictor.predict_files(lists, ofiles, save_probabilities, num_processes_preprocessing,
                                    num_processes_export, finished)
    except BaseException:
        csv_path = record.publish(valid, provenance_of_run)
        left = [cid for cid in todo if cid not in set(done)]
        report(f"{output_dir}: stopped after {len(done)} of {len(todo)} case(s); {csv_path} lists the cases "
               f"predicted with this model; {len(left)} case(s) still hold their earlier results or none "
               f"(first: {left[0] if left else '-'}); run again to finish")
        raise
    finally:
        progress.close()
        shutil.rmtree(staging, ignore_errors=True)
    csv_path = record.publish(valid, provenance_of_run)
    note = f" (model or settings changed: {', '.join(changed)}; its cases predicted again)" if changed else ""
    report(f"{output_dir}: {len(todo)} predicted, {len(mine) - len(todo)} kept, {len(gone)} removed{note}")
    return csv_path


class CaseProgress:
    """A case-by-case progress display on stderr: tqdm's bar in a terminal (as conversion shows), else one line
    per case (a log file shows where a long run is)."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.n, self.start = total, what, 0, time.perf_counter()
        self.bar = tqdm(total=total, desc=what, unit="case", file=sys.stderr) if total and sys.stderr.isatty() \
            else None

    def step(self, case_id: str) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update()
        else:
            print(f"{self.what}: {case_id} done ({self.n}/{self.total}, {time.perf_counter() - self.start:.0f} s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _model_changes(output_dir: str, identity: dict, latest: Dict[str, dict], key: str,
                   inputs: Dict[str, dict]) -> List[str]:
    """What differs from the model of the rows already there (empty when nothing does)."""
    if not any(e["model"] != key for cid, e in latest.items() if cid in inputs):
        return []
    path = os.path.join(output_dir, PROVENANCE_NAME)
    try:
        old = read_json(path).get("model", {})
    except (OSError, ValueError, AttributeError):
        old = {}
    return [k for k in identity if old.get(k) != identity[k]] or ["model"]


def classify_files(predictor: nnUNetPredictorMTL, files: Sequence[str], work_dir: str,
                   clip_percentiles=(0.5, 98.5), chatter=None, engine: str = "threads",
                   ray_address: Optional[str] = None, ray_workers: Optional[int] = None) -> Iterator[dict]:
    """One result per file, yielded as each finishes: ``file``, ``case_id``, ``outputs`` (head
    outputs, calibrated, with the input checks' raw measurements: ``case_checks``), ``review`` (conformal
    columns), ``seconds``; or ``file`` and ``error`` (one line) when
    the file cannot be read or predicted, and the next file goes on. ``engine='ray'``: the files on Ray actors
    (``ray_engine.classify_files``, in the order they finish); calibration and the review columns are added here
    either way."""
    if engine not in ("threads", "ray"):
        raise ValueError(f"classifying files runs on engine 'threads' or 'ray', not {engine!r}")
    if engine == "ray":
        raw = ray_engine.classify_files(predictor, files, clip_percentiles, ray_address, ray_workers)
    elif ray_address is not None or ray_workers is not None:
        raise ValueError(f"ray_address and ray_workers are for engine 'ray', not {engine!r}")
    else:
        raw = heads_of_files(predictor, files, work_dir, clip_percentiles, chatter)
    for r in raw:
        if "error" not in r:
            outputs = predictor.calibrated_outputs(r["outputs"])
            r = {**r, "outputs": outputs, "review": predictor.review_columns(outputs)}
        yield r
