"""One structured report per case: each target's prediction as a TID 1500 measurement group.

A Comprehensive 3D SR holding a Measurement Report whose image-library groups (one per target,
``MeasurementsAndQualitativeEvaluations``) carry:

- classification: a qualitative evaluation (target -> predicted class) and one measurement per
  class, its probability (UCUM unit ``1``);
- regression: one measurement, the value in the target's unit (UCUM code, ``1`` when unitless).

Target and class names have no standard codes, so they are coded in the private scheme
``99NNUNETMTL`` (code value = the name, meaning = the readable name). Whether the probabilities
are calibrated is an algorithm parameter of every group. ``read_sr_predictions`` reads them back.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from nnunet_mtl import __version__
from nnunet_mtl.outputs.dicom.seg import MANUFACTURER
from nnunet_mtl.prediction_table import prob_column
from nnunet_mtl.targets import TargetSpec

log = logging.getLogger(__name__)

SCHEME = "99NNUNETMTL"
SERIES_NUMBER = 902
PROB_PREFIX = "P:"
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")
CALIBRATED_TEXT = {True: "probabilities: temperature-scaled (calibrated)", False: "probabilities: raw softmax"}


def _code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, SCHEME, meaning[:64])


def _unit(unit: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(unit, "UCUM", unit) if unit else UNITLESS


def _group(target, row: Mapping, source_images, calibrated: bool):
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
    else:
        value = float(row[target.name]) if row.get(target.name) not in ("", None) else math.nan
        if not math.isfinite(value):
            log.info("case %s: no value for %r; left out of the SR", row.get("case_id"), target.name)
            return None
        evaluations, measurements = [], [hd.sr.Measurement(name=name, value=value, unit=_unit(target.unit))]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, algorithm_id=algo, measurements=measurements or None,
        qualitative_evaluations=evaluations or None, source_images=source_images)


def build_sr(datasets: Sequence[Dataset], predictions_row: Mapping, spec: TargetSpec, *, calibrated: bool = False,
             series_number: int = SERIES_NUMBER) -> hd.sr.Comprehensive3DSR:
    """The SR object (not written) for one case's ``predictions.csv`` row, referencing ``datasets``."""
    source_images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in datasets]
    groups = [g for g in (_group(t, predictions_row, source_images, calibrated) for t in spec) if g is not None]
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
    """target -> ``{"class": name, "probs": {class: p}}`` (classification) or ``{"value": v, "unit": u}``
    from an SR written by ``build_sr`` (pydicom dataset)."""
    out: Dict[str, dict] = {}
    for item in _walk(sr.get("ContentSequence", [])):
        concept = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if concept is None or concept.CodingSchemeDesignator != SCHEME:
            continue
        key = _code_value(concept)
        if item.ValueType == "CODE":
            out.setdefault(key, {})["class"] = _code_value(item.ConceptCodeSequence[0])
        elif item.ValueType == "NUM":
            mv = item.MeasuredValueSequence[0]
            if key.startswith(PROB_PREFIX):
                target, cls = key[len(PROB_PREFIX):].split("=", 1)
                out.setdefault(target, {}).setdefault("probs", {})[cls] = float(mv.NumericValue)
            else:
                out.setdefault(key, {}).update(value=float(mv.NumericValue),
                                               unit=_code_value(mv.MeasurementUnitsCodeSequence[0]))
    return out


def _code_value(code) -> str:
    for kw in ("CodeValue", "LongCodeValue", "URNCodeValue"):
        if kw in code:
            return str(getattr(code, kw))
    return ""


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))
