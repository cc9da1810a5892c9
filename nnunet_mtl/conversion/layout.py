"""What an input layout provides; ``registry.py`` lists the layouts, the caller asks the registry.

A layout knows how to recognise its folder structure and how to turn it into cases, a
case table and its defaults; everything after that (checks, description, writing) is shared
(``cases.write_cases``). A new layout is one subclass in its own file plus one line in
``registry.LAYOUTS``.
"""
from __future__ import annotations

from nnunet_mtl.conversion.masks import ConversionResult
from nnunet_mtl.conversion.options import ConversionOptions


class InputLayout:
    name = ""
    expects = ""          # one phrase for error messages: what the folder looks like
    auto_detect = True    # whether ``detect_layout`` may pick it (specialisations of another layout do not)

    def recognises(self, input_dir: str) -> bool:
        """Whether ``input_dir`` has this layout's structure (cheap: folder names only)."""
        raise NotImplementedError

    def convert(self, input_dir: str, raw_root: str, dataset_id: int, name: str, options: ConversionOptions,
                overwrite: bool = False) -> ConversionResult:
        raise NotImplementedError
