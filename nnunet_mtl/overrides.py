"""Training knobs passed to a trainer from outside, e.g. by ``pipeline.py`` through stock
``nnUNetv2_train`` (and into every DDP worker): a JSON object in ``NNUNET_MTL_OVERRIDES``.

Only the names below are accepted, so a typo is an error rather than a silently ignored knob.
"""
import json
import os

ENV_VAR = "NNUNET_MTL_OVERRIDES"
TRAINER_KNOBS = {
    "num_epochs": int, "num_iterations_per_epoch": int, "num_val_iterations_per_epoch": int,
    "initial_lr": float, "weight_decay": float, "save_every": int,
    "warmup_epochs": int, "ramp_epochs": int, "head_weight_start": float, "head_weight_end": float,
    "class_weight_smoothing": float, "class_weight_power": float,
    "early_stopping_patience": int, "selection_seg_weight": float,
}


def read_overrides(environ=None) -> dict:
    raw = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV_VAR} is not valid JSON: {e}") from None
    unknown = sorted(set(values) - set(TRAINER_KNOBS))
    if unknown:
        raise ValueError(f"{ENV_VAR}: unknown knob(s) {unknown}; known: {sorted(TRAINER_KNOBS)}")
    return {k: TRAINER_KNOBS[k](v) for k, v in values.items()}


def encode_overrides(**knobs) -> str:
    """The env value for these knobs (checked the same way the trainer will check them)."""
    value = json.dumps({k: v for k, v in knobs.items() if v is not None})
    read_overrides({ENV_VAR: value})
    return value
