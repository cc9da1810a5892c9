"""Every training knob, declared once: name, type, default, help and pipeline flag.

From this table come
* the trainer's defaults (``apply_knobs`` in ``nnUNetTrainerMTL.__init__``),
* ``NNUNET_MTL_OVERRIDES`` parsing (``read_overrides``; an unknown name is an error), the way knobs
  reach stock ``nnUNetv2_train`` and every DDP worker,
* the pipeline's ``--flags`` (``add_knob_arguments``) and the knobs it passes on (``knobs_from_args``),
* ``knob_overrides``: the one context manager that sets and restores the env variable,
* ``RECIPES``: named designs (a knob -> value table each) behind ``--recipe`` / ``recipe_knobs`` / the
  ``NNUNET_MTL_OVERRIDES`` key ``recipe``; knobs set explicitly win over the recipe's.

A default of ``None`` means "derived": the learning rate from the optimiser, the head learning rate
from the U-Net's, and the schedule lengths from the epoch budget (``resolve_schedule``).
To change a default (e.g. the optimiser), change its line here.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

ENV_VAR = "NNUNET_MTL_OVERRIDES"


def parse_bool(value) -> bool:
    """A boolean knob from JSON (true/false) or a command line (true/false/yes/no/1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


@dataclass(frozen=True)
class Knob:
    name: str                      # trainer attribute and NNUNET_MTL_OVERRIDES key
    type: Callable[[Any], Any]
    default: Any                   # None: derived at training time (see the help)
    help: str
    flag: Optional[str] = None     # pipeline.py flag (without --); None: env/Python API only
    choices: Optional[tuple] = None
    nnunet: bool = False           # an nnU-Net trainer attribute: its default stays nnU-Net's


KNOBS = (
    Knob("num_epochs", int, None, "training epochs (default: nnU-Net's 1000, or the trainer variant's budget)",
         "epochs", nnunet=True),
    Knob("num_iterations_per_epoch", int, None, "training iterations per epoch (nnU-Net default 250)",
         "iterations_per_epoch", nnunet=True),
    Knob("num_val_iterations_per_epoch", int, None, "validation iterations per epoch (nnU-Net default 50)",
         "val_iterations_per_epoch", nnunet=True),
    Knob("save_every", int, None, "write checkpoint_latest every N epochs (nnU-Net default 50)", nnunet=True),
    Knob("checkpoint_minutes", float, 5.0, "also write checkpoint_latest when this many minutes have passed since "
         "the last one (0: every epoch); a killed run resumes losing at most that (default 5)", "checkpoint_minutes"),
    Knob("optimizer_name", str, "sgd", "sgd (default: nnU-Net's own, nesterov, momentum 0.99; the accuracy "
         "benchmark found the seed's adamw costing most of the Dice at equal budget) or adamw (the seed design)",
         "optimizer", choices=("adamw", "sgd")),
    Knob("initial_lr", float, None, "U-Net learning rate (default 1e-2 with sgd, 1e-4 with adamw)", "lr"),
    Knob("head_lr", float, None, "learning rate of the heads (default 1e-3 with sgd; with adamw the U-Net's)",
         "head_lr"),
    Knob("weight_decay", float, 3e-5, "weight decay (default 3e-5)", "weight_decay"),
    Knob("warmup_epochs", int, None, "segmentation-first epochs (default 2%% of the epochs: 20 of 1000)",
         "warmup_epochs"),
    Knob("ramp_epochs", int, None, "epochs of the linear ramp to balance (default 3%% of the epochs: 30 of 1000)",
         "ramp_epochs"),
    Knob("heads_train_encoder", parse_bool, None,
         "whether the heads' loss also trains the encoder (true / false). Default: false when the dataset has "
         "masks: the U-Net gets exactly stock nnU-Net's gradients (same seed, same weights; the accuracy benchmark "
         "found the joint gradient costing Dice and weakening the encoder's features for a probe) and the heads "
         "learn on its features; true without masks (nothing else trains the encoder)", "heads_train_encoder"),
    Knob("head_weight_start", float, 0.1, "head loss weight in the first phase (default 0.1)", "head_weight_start"),
    Knob("head_weight_end", float, 0.5, "head loss weight after the ramp (default 0.5)", "head_weight_end"),
    Knob("class_weight_smoothing", float, 1.0, "s in w_c ~ (1/(n_c + s))^p (default 1)", "class_weight_smoothing"),
    Knob("class_weight_power", float, 1.0, "p in w_c ~ (1/(n_c + s))^p; 0 turns class weighting off (default 1)",
         "class_weight_power"),
    Knob("early_stopping_patience", int, None,
         "early stopping patience in epochs (default: none when the heads do not train the encoder, the U-Net "
         "trains its whole budget as stock nnU-Net's; else 10%% of the epochs: 100 of 1000, at least 10)", "patience"),
    Knob("selection_seg_weight", float, 0.5, "weight of the pseudo Dice in the combined selection score (default 0.5)",
         "selection_seg_weight"),
    Knob("init_from", str, None, "start encoder/decoder from a stock nnU-Net model: its folder (fold k from its "
         "fold_k), a fold folder or a checkpoint .pth; heads start fresh (not applied when continuing)", "init_from"),
    Knob("heads_only_epochs", int, 0, "first epochs in which only the heads train (encoder/decoder frozen; default 0)",
         "heads_only_epochs"),
)
BY_NAME: Dict[str, Knob] = {k.name: k for k in KNOBS}
TRAINER_KNOBS = {k.name: k.type for k in KNOBS}  # name -> type (the old overrides.py table)

# Schedule lengths as fractions of the budget: the seed design's 20 / 30 / 100 epochs of nnU-Net's 1000.
REFERENCE_EPOCHS = 1000
SCHEDULE_FRACTIONS = {"warmup_epochs": 20 / REFERENCE_EPOCHS, "ramp_epochs": 30 / REFERENCE_EPOCHS,
                      "early_stopping_patience": 100 / REFERENCE_EPOCHS}
SCHEDULE_MINIMUM = {"warmup_epochs": 1, "ramp_epochs": 1, "early_stopping_patience": 10}
DEFAULT_LR = {"adamw": 1e-4, "sgd": 1e-2}
DEFAULT_HEAD_LR = {"sgd": 1e-3}  # heads on SGD at the U-Net's 1e-2 were not benchmarked; 1e-3 was

# Named short budgets (knobs only): pipeline.py --demo uses "demo".
BUDGETS = {
    "demo": dict(num_epochs=20, num_iterations_per_epoch=16, num_val_iterations_per_epoch=3, warmup_epochs=3,
                 ramp_epochs=5),
    "tiny": dict(num_epochs=2, num_iterations_per_epoch=3, num_val_iterations_per_epoch=1, warmup_epochs=1,
                 ramp_epochs=1),
}
# the demo (pipeline.py --demo, the notebook's "demo"): every step on a CPU in minutes; its numbers say nothing
# about real data
DEMO_BUDGET = BUDGETS["demo"]
DEMO_SHRINK = {"3d": dict(max_features=24, batch_size=2, n_stages=4, patch_size=(16, 32, 32)),
               "2d": dict(max_features=32, batch_size=4, n_stages=5)}

# Named designs (knobs only): --recipe NAME fills these knobs, a knob flag given explicitly wins.
# "seed": the project's seed design: AdamW lr 1e-4 (heads too) with nnU-Net's poly decay, segmentation-first
# (90/10) for 20 epochs, then a 30-epoch linear ramp to 50/50, the heads' gradient training the encoder,
# smoothed inverse-frequency class weights, 500 epochs with early-stopping patience 100.
RECIPES = {
    "seed": dict(optimizer_name="adamw", initial_lr=1e-4, weight_decay=3e-5, warmup_epochs=20, ramp_epochs=30,
                 head_weight_start=0.1, head_weight_end=0.5, class_weight_smoothing=1.0, class_weight_power=1.0,
                 heads_train_encoder=True, num_epochs=500, early_stopping_patience=100),
}
RECIPE_KEY = "recipe"  # the NNUNET_MTL_OVERRIDES key naming a recipe


def recipe_knobs(name: str) -> dict:
    """The knob values of recipe ``name`` (a copy, checked like any override)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return check_knobs(RECIPES[name], f"recipe {name!r}")


# how a model's image-level heads are set (pipeline --heads): fitted in closed form after training, or trained
HEADS_CHOICES = ("fitted", "trained")
DEFAULT_HEADS = "fitted"


def check_knobs(values: dict, source: str = ENV_VAR) -> dict:
    """Typed copy of ``values``; an unknown name or a value outside the choices is an error naming ``source``."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ValueError(f"{source}: unknown knob(s) {unknown}; known: {sorted(BY_NAME)}")
    out = {}
    for name, value in values.items():
        knob = BY_NAME[name]
        out[name] = None if value is None else knob.type(value)
        if knob.choices and out[name] is not None and out[name] not in knob.choices:
            raise ValueError(f"{source}: {name} must be one of {list(knob.choices)}, not {value!r}")
    return out


def read_overrides(environ=None) -> dict:
    raw = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV_VAR} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{ENV_VAR} must be a JSON object of knob: value")
    recipe = values.pop(RECIPE_KEY, None)
    out = recipe_knobs(recipe) if recipe is not None else {}
    out.update(check_knobs(values))  # knobs named explicitly win over the recipe's
    return out


def encode_overrides(**knobs) -> str:
    """The env value for these knobs (checked the same way the trainer will check them); None values are dropped."""
    value = json.dumps({k: v for k, v in knobs.items() if v is not None})
    read_overrides({ENV_VAR: value})
    return value


@contextmanager
def knob_overrides(**knobs) -> Iterator[str]:
    """Set ``NNUNET_MTL_OVERRIDES`` to these knobs for the block (child processes inherit it), then restore it."""
    value = encode_overrides(**knobs)
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = value
    try:
        yield value
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def apply_knobs(trainer, environ=None) -> dict:
    """Our defaults on the trainer (nnU-Net's own attributes keep nnU-Net's / the variant's values), then the
    overrides from the environment, which always win. Returns the overrides applied."""
    for knob in KNOBS:
        if not knob.nnunet:
            setattr(trainer, knob.name, knob.default)
    overrides = read_overrides(environ)
    for name, value in overrides.items():
        setattr(trainer, name, value)
    return overrides


def resolve_schedule(num_epochs: int, warmup_epochs: Optional[int] = None, ramp_epochs: Optional[int] = None,
                     early_stopping_patience: Optional[int] = None) -> Dict[str, int]:
    """Schedule lengths for a budget: explicit values win, the others scale with ``num_epochs`` (the seed
    design's 20 / 30 / 100 epochs at 1000), never below 1 / 1 / 10 epochs."""
    given = {"warmup_epochs": warmup_epochs, "ramp_epochs": ramp_epochs,
             "early_stopping_patience": early_stopping_patience}
    out = {}
    for name, value in given.items():
        if value is None:
            value = max(SCHEDULE_MINIMUM[name], int(math.floor(SCHEDULE_FRACTIONS[name] * num_epochs + 0.5)))
        out[name] = int(value)
    return out


def resolve_lrs(optimizer: str, initial_lr: Optional[float], head_lr: Optional[float]) -> tuple:
    """(U-Net lr, head lr): unset ones follow the optimiser's defaults (heads: the U-Net's lr for adamw)."""
    lr = DEFAULT_LR[optimizer] if initial_lr is None else float(initial_lr)
    return lr, DEFAULT_HEAD_LR.get(optimizer, lr) if head_lr is None else float(head_lr)


# ------------------------------------------------------------------------------------------- pipeline flags
def add_knob_arguments(group) -> None:
    """--recipe, then one --flag per knob that has a pipeline flag (dest = the knob's name, default None =
    trainer default)."""
    group.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                       help="a named design: seed = AdamW lr 1e-4 with poly decay, weight decay 3e-5, "
                            "segmentation-first (head weight 0.1) for 20 epochs then a 30-epoch linear ramp to "
                            "0.5, smoothed inverse-frequency class weights, heads train the encoder, 500 epochs, "
                            "patience 100. Any knob flag given explicitly wins over the recipe")
    for knob in KNOBS:
        if knob.flag:
            group.add_argument(f"--{knob.flag}", dest=knob.name, type=knob.type, default=None, choices=knob.choices,
                               help=knob.help)


def knobs_from_args(args, budget: Optional[dict] = None) -> dict:
    """The knobs a parsed command line sets (flags left out are not passed on): its ``--recipe``'s, then
    ``budget`` (e.g. the demo's), then the knob flags given, each winning over the one before."""
    recipe = getattr(args, "recipe", None)
    out = recipe_knobs(recipe) if recipe else {}
    out.update(budget or {})
    out.update({k.name: getattr(args, k.name) for k in KNOBS
                if k.flag and getattr(args, k.name, None) is not None})
    return out
