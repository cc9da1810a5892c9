"""One entry point for every input layout: pick the layout (``registry``), convert, report repairs.

The pipeline CLI and ``workflow.prepare`` call ``convert``; the layouts stay independent of
each other and of how the user names folders (``images`` or ``imagesTr``).
"""
from __future__ import annotations

import logging
from typing import Optional

from nnunet_mtl.conversion import registry
from nnunet_mtl.conversion.masks import ConversionError, ConversionReport, ConversionResult
from nnunet_mtl.conversion.options import ConversionOptions
from nnunet_mtl.conversion.registry import LAYOUT_NAMES

__all__ = ["convert", "convert_with_report", "detect_layout", "ConversionError", "ConversionOptions",
           "ConversionReport", "LAYOUT_NAMES"]

log = logging.getLogger(__name__)


def detect_layout(input_dir: str) -> str:
    """The name of the layout ``input_dir`` has ('pancreas' or 'generic')."""
    return registry.detect_layout(input_dir).name


def convert_with_report(input_dir: str, raw_root: str, dataset_id: int, name: str, layout: str = registry.AUTO,
                        overwrite: bool = False, options: Optional[ConversionOptions] = None,
                        **keywords) -> ConversionResult:
    """Like ``convert`` but returns the folder together with the report of what was repaired."""
    if options is None:
        options = ConversionOptions.from_keywords(**keywords)
    elif keywords:
        raise ConversionError(f"pass either options or keywords, not both (got {sorted(keywords)})")
    if layout == registry.AUTO:
        chosen = registry.detect_layout(input_dir)
        log.info("%s: detected the %s layout", input_dir, chosen.name)
    else:
        chosen = registry.layout_named(layout)
    return chosen.convert(input_dir, raw_root, dataset_id, name, options, overwrite)


def convert(input_dir: str, raw_root: str, dataset_id: int, name: str, layout: str = registry.AUTO,
            overwrite: bool = False, **options) -> str:
    """Convert ``input_dir`` to ``raw_root/DatasetXXX_name`` and return that folder; prints what was done.

    ``options`` are the fields of ``ConversionOptions`` (``labels_csv``, ``spec_json``, ``masks_dir``,
    ``test_dir``, ``patient_column``, ``clip_percentiles`` (None: no clipping), ``target_spacing`` in numpy
    (z, y, x) / (y, x) order, ``image_interpolation``, ``grey``, ``description`` (a path or a
    ``DatasetDescription``)) plus ``labels``, ``regions``, ``lateral_pairs``, ``channel_names``."""
    result = convert_with_report(input_dir, raw_root, dataset_id, name, layout, overwrite, **options)
    summary = result.report.summary()
    log.info("%s\n%s", result.folder, summary)
    print(f"{result.folder}: {summary}")
    return result.folder
