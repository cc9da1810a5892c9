"""One structured report per case: each target's prediction as a TID 1500 measurement group.

A Comprehensive 3D SR holding a Measurement Report whose image-library groups (one per target,
``MeasurementsAndQualitativeEvaluations``) carry:

- classification: a qualitative evaluation (target -> predicted class) and one measurement per
  class, its probability (UCUM unit ``1``);
- regression: one measurement, the value in the target's unit (UCUM code, ``1`` when unitless).

When ``predictions.csv`` has the review columns (older tables do not; nothing is written for a missing or
unreadable cell):

- a classification target's conformal prediction set: one qualitative evaluation per member class
  (``SET:<target>`` -> the class);
- a regression target's conformal interval: the measurement's properties (TID 310) ``Range of upper / lower
  measurement uncertainty`` (SCT 371886008 / 371885007), ``high - value`` and ``value - low`` (finite
  intervals only);
- one more group, tracking identifier ``case review``: ``needs_review``, ``seg_quality_flag`` and ``ood_flag``
  as qualitative evaluations valued SCT Yes / No, ``seg_quality`` (the mask's estimated Dice) and
  ``ood_score`` as unitless measurements, the conformal coverage as an algorithm parameter.

Target and class names, the set and the review items have no standard codes, so they are coded in the
private scheme ``99NNUNETMTL`` (code value = the name, meaning = the readable name). Whether the
probabilities are calibrated is an algorithm parameter of every group. ``read_sr_predictions`` and
``read_sr_review`` read them back.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from nnunet_mtl import __version__, case_checks
from nnunet_mtl.outputs.dicom.seg import MANUFACTURER
from nnunet_mtl.prediction_table import (COVERAGE_COLUMN, REVIEW_COLUMN, SET_SEPARATOR, interval_columns, prob_column,
                                         review_cells, set_column)
from nnunet_mtl.targets import TargetSpec

log = logging.getLogger(__name__)

SCHEME = "99NNUNETMTL"
SERIES_NUMBER = 902
PROB_PREFIX = "P:"
SET_PREFIX = "SET:"        # a member class of a target's conformal prediction set
REVIEW_PREFIX = "REVIEW:"  # the case review group's items (predictions.csv column names after it)
REVIEW_TRACKING = "case review"
COVERAGE_TEXT = "conformal coverage "
REVIEW_FLAGS = {REVIEW_COLUMN: "Needs review (conformal set or interval)",
                case_checks.SEG_QUALITY_FLAG: "Low estimated segmentation quality",
                case_checks.OOD_FLAG: "Input unlike the training data"}
REVIEW_SCORES = {case_checks.SEG_QUALITY: "Estimated Dice similarity coefficient of the mask",
                 case_checks.OOD_SCORE: "Out-of-distribution score (above 1: flagged)"}
UPPER, LOWER = codes.SCT.RangeOfUpperMeasurementUncertainty, codes.SCT.RangeOfLowerMeasurementUncertainty
YES_NO = {"yes": codes.SCT.Yes, "no": codes.SCT.No}
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")
CALIBRATED_TEXT = {True: "probabilities: temperature-scaled (calibrated)", False: "probabilities: raw softmax"}


def _code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, SCHEME, meaning[:64])


def _unit(unit: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(unit, "UCUM", unit) if unit else UNITLESS


def _finite(text) -> float:
    """A cell as a finite number, else NaN (an empty, garbled or infinite cell is left out of the SR)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _interval(target, cells: Mapping[str, str], value: float):
    """The conformal interval as the measurement's uncertainty range (None: no finite interval in the row)."""
    low, high = (_finite(cells.get(c)) for c in interval_columns(target.name))
    if not (math.isfinite(low) and math.isfinite(high) and low <= value <= high):
        return None
    return hd.sr.MeasurementProperties(upper_measurement_uncertainty=high - value,
                                       lower_measurement_uncertainty=value - low)


def _review_group(cells: Mapping[str, str], source_images):
    """The ``case review`` group (None when the row has none of its columns)."""
    evaluations = [hd.sr.QualitativeEvaluation(name=_code(REVIEW_PREFIX + col, meaning),
                                               value=YES_NO[cells[col].lower()])
                   for col, meaning in REVIEW_FLAGS.items() if cells.get(col, "").lower() in YES_NO]
    measurements = [hd.sr.Measurement(name=_code(REVIEW_PREFIX + col, meaning), value=_finite(cells[col]),
                                      unit=UNITLESS)
                    for col, meaning in REVIEW_SCORES.items() if math.isfinite(_finite(cells.get(col)))]
    if not evaluations and not measurements:
        return None
    parameters = [COVERAGE_TEXT + cells[COVERAGE_COLUMN]] if COVERAGE_COLUMN in cells else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=REVIEW_TRACKING),
        algorithm_id=hd.sr.AlgorithmIdentification(name="nnunet_mtl", version=__version__, parameters=parameters),
        measurements=measurements or None, qualitative_evaluations=evaluations or None, source_images=source_images)


def _group(target, row: Mapping, source_images, calibrated: bool, cells: Mapping[str, str]):
    algo = hd.sr.AlgorithmIdentification(name="nnunet_mtl", version=__version__,
                                         parameters=[CALIBRATED_TEXT[bool(calibrated)]])
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"target {target.name}"[:64])
    name = _code(target.name, target.name)
    if target.is_classification:
        predicted = str(row[target.name])
        evaluations = [hd.sr.QualitativeEvaluation(name=name, value=_code(predicted, predicted))]
        measurements = [hd.sr.Measurement(name=_code(PROB_PREFIX + f"{target.name}={c}", f"p({target.name} = {c})"),
                                          value=float(row[prob_column(target.name, c)]), unit=UNITLESS)
                        for c in target.classes]
        members = [c for c in cells.get(set_column(target.name), "").split(SET_SEPARATOR) if c]
        evaluations += [hd.sr.QualitativeEvaluation(name=_code(SET_PREFIX + target.name,
                                                               f"{target.name} prediction set member"),
                                                    value=_code(c, c)) for c in members]
    else:
        value = float(row[target.name]) if row.get(target.name) not in ("", None) else math.nan
        if not math.isfinite(value):
            log.info("case %s: no value for %r; left out of the SR", row.get("case_id"), target.name)
            return None
        evaluations, measurements = [], [hd.sr.Measurement(name=name, value=value, unit=_unit(target.unit),
                                                           properties=_interval(target, cells, value))]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, algorithm_id=algo, measurements=measurements or None,
        qualitative_evaluations=evaluations or None, source_images=source_images)


def build_sr(datasets: Sequence[Dataset], predictions_row: Mapping, spec: TargetSpec, *, calibrated: bool = False,
             series_number: int = SERIES_NUMBER) -> hd.sr.Comprehensive3DSR:
    """The SR object (not written) for one case's ``predictions.csv`` row, referencing ``datasets``."""
    source_images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in datasets]
    cells = review_cells(predictions_row, spec)
    groups = [_group(t, predictions_row, source_images, calibrated, cells) for t in spec]
    groups = [g for g in groups + [_review_group(cells, source_images)] if g is not None]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="nnunet_mtl", manufacturer_name=MANUFACTURER, model_name=MANUFACTURER))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=IMAGING_PROCEDURE, imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(evidence=list(datasets), content=report, series_instance_uid=generate_uid(),
                                   series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
                                   manufacturer=MANUFACTURER, series_description="nnunet_mtl predictions")


def read_sr_predictions(sr: Dataset) -> Dict[str, dict]:
    """target -> ``{"class": name, "probs": {class: p}}`` (classification, plus ``"set": [classes]`` when the SR
    has the prediction set) or ``{"value": v, "unit": u}`` (plus ``"low"``, ``"high"`` with the interval) from an
    SR written by ``build_sr`` (pydicom dataset)."""
    out: Dict[str, dict] = {}
    for item in _walk(sr.get("ContentSequence", [])):
        key = _private_name(item)
        if key is None or key.startswith(REVIEW_PREFIX):
            continue
        if item.ValueType == "CODE" and key.startswith(SET_PREFIX):
            out.setdefault(key[len(SET_PREFIX):], {}).setdefault("set", []).append(
                _code_value(item.ConceptCodeSequence[0]))
        elif item.ValueType == "CODE":
            out.setdefault(key, {})["class"] = _code_value(item.ConceptCodeSequence[0])
        elif item.ValueType == "NUM":
            mv = item.MeasuredValueSequence[0]
            if key.startswith(PROB_PREFIX):
                target, cls = key[len(PROB_PREFIX):].split("=", 1)
                out.setdefault(target, {}).setdefault("probs", {})[cls] = float(mv.NumericValue)
            else:
                value = float(mv.NumericValue)
                entry = out.setdefault(key, {})
                entry.update(value=value, unit=_code_value(mv.MeasurementUnitsCodeSequence[0]))
                ranges = {_code_value(c.ConceptNameCodeSequence[0]): float(c.MeasuredValueSequence[0].NumericValue)
                          for c in item.get("ContentSequence", []) if c.ValueType == "NUM"}
                if UPPER.value in ranges and LOWER.value in ranges:
                    entry.update(low=value - ranges[LOWER.value], high=value + ranges[UPPER.value])
    return out


def read_sr_review(sr: Dataset) -> Dict[str, object]:
    """The ``case review`` group of an SR written by ``build_sr``, keyed by the ``predictions.csv`` column:
    ``needs_review`` / ``seg_quality_flag`` / ``ood_flag`` -> 'yes' or 'no', ``seg_quality`` / ``ood_score`` ->
    float, ``conformal_coverage`` -> text; {} for an SR without it."""
    out: Dict[str, object] = {}
    for item in _walk(sr.get("ContentSequence", [])):
        key = _private_name(item)
        if key is not None and key.startswith(REVIEW_PREFIX):
            column = key[len(REVIEW_PREFIX):]
            if item.ValueType == "CODE":
                out[column] = str(item.ConceptCodeSequence[0].CodeMeaning).lower()
            elif item.ValueType == "NUM":
                out[column] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT" and str(item.TextValue).startswith(COVERAGE_TEXT):
            out[COVERAGE_COLUMN] = str(item.TextValue)[len(COVERAGE_TEXT):]
    return out


def _private_name(item):
    """The item's concept name code value when it is in the private scheme, else None."""
    concept = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
    return _code_value(concept) if concept is not None and concept.CodingSchemeDesignator == SCHEME else None


def _code_value(code) -> str:
    for kw in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        if kw in code:
            return str(getattr(code, kw))
    return ""


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))
