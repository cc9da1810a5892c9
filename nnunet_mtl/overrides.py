"""Kept for existing imports: the knob table and ``NNUNET_MTL_OVERRIDES`` handling live in ``nnunet_mtl.knobs``."""
from nnunet_mtl.knobs import ENV_VAR, TRAINER_KNOBS, encode_overrides, knob_overrides, read_overrides  # noqa: F401
