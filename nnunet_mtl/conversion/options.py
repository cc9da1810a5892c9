"""What the user can say about a conversion, as one object every layout receives."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

from nnunet_mtl.conversion.description import (DatasetDescription, load_description, parse_channel_names,
                                               parse_labels, parse_pairs, parse_regions)
from nnunet_mtl.conversion.image_readers import DEFAULT_CLIP, ReadOptions
from nnunet_mtl.conversion.masks import DEFAULT_REL_TOL, ConversionError, check_target_spacing
from nnunet_mtl.targets import TargetSpec, TargetSpecError, load_spec_file

# keyword -> parser for the description entries that may also be passed one by one
_DESCRIPTION_KEYWORDS = {"labels": parse_labels, "regions": parse_regions, "lateral_pairs": parse_pairs,
                         "channel_names": parse_channel_names}


@dataclass(frozen=True)
class ConversionOptions:
    """Files beside the images, how to read pixels, and the dataset description."""
    labels_csv: Optional[str] = None          # default: <input_dir>/labels.csv
    spec_json: Optional[str] = None           # the targets; also possible as the description's "targets"
    masks_dir: Optional[str] = None
    test_dir: Optional[str] = None
    patient_column: Optional[str] = None
    clip_percentiles: Optional[Sequence[float]] = DEFAULT_CLIP
    target_spacing: Optional[Sequence[float]] = None
    image_interpolation: str = "linear"
    rel_tol: float = DEFAULT_REL_TOL
    grey: bool = False                        # colour 2D images -> one luma channel
    description: DatasetDescription = field(default_factory=DatasetDescription)

    def __post_init__(self):
        if self.target_spacing is not None:  # refused before any image is read
            check_target_spacing(self.target_spacing)

    @classmethod
    def from_keywords(cls, **kwargs) -> "ConversionOptions":
        """Options from ``convert(..., **kwargs)``: the fields above, ``description`` as a path or object,
        and ``labels`` / ``regions`` / ``lateral_pairs`` / ``channel_names`` on top of the description."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known - set(_DESCRIPTION_KEYWORDS))
        if unknown:
            raise ConversionError(f"unknown conversion option {unknown[0]!r} "
                                  f"(known: {', '.join(sorted(known | set(_DESCRIPTION_KEYWORDS)))})")
        description = kwargs.pop("description", None)
        if isinstance(description, str):
            description = load_description(description)
        description = description or DatasetDescription()
        given = {k: parse(kwargs.pop(k), "conversion options") for k, parse in _DESCRIPTION_KEYWORDS.items()
                 if kwargs.get(k) is not None}
        for k in _DESCRIPTION_KEYWORDS:
            kwargs.pop(k, None)
        description = description.updated(DatasetDescription(**given))
        for key in ("clip_percentiles", "target_spacing"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(description=description, **kwargs)

    def read_options(self, colour: bool = False) -> ReadOptions:
        return ReadOptions(clip_percentiles=self.clip_percentiles, target_spacing=self.target_spacing,
                           image_interpolation=self.image_interpolation, rel_tol=self.rel_tol, colour=colour)

    def targets(self) -> Optional[TargetSpec]:
        """The target spec from ``spec_json`` or the description (not both); None: inferred from the CSV."""
        if self.spec_json and self.description.targets is not None:
            raise ConversionError(f"{self.spec_json}: targets are given twice (spec JSON and the dataset "
                                  f"description {self.description.source}); keep one")
        if self.description.targets is not None:
            return self.description.targets
        if not self.spec_json:
            return None
        try:
            return load_spec_file(self.spec_json)
        except TargetSpecError as e:
            raise ConversionError(str(e)) from None
