"""How one case's tile head outputs become the case's outputs: every rule and constant in one place.

Each tile of nnU-Net's sliding window (mirror-averaged) gives head outputs and ``fg``, its
Gaussian-weighted mean predicted foreground probability. A rule is a weight per tile,
``w = floor + (1 - floor) * fg``, normalised over the case's tiles:

* ``foreground_weighted`` (floor 0): tiles that see the structure dominate. On a negative case,
  where any predicted foreground is a false positive, one tile with a small blob outweighs
  all the others (9 tiles at P(pos) 0.1 with fg 0.002 plus one at P(pos) 0.8 with fg 0.05
  give 0.61; the plain mean is 0.17).
* ``floored`` (floor ``foreground_floor``, default 0.5): every tile keeps at least ``floor``;
  foreground tiles still count up to ``1 / floor`` times more (the example above: 0.17).
* ``mean`` (floor 1): plain mean; the rule for datasets without masks.

With floor 0 and no foreground anywhere, the weights fall back to the plain mean.
A last-tile rule (as public multi-task nnU-Nets use) is deliberately not offered.
Benchmarks and CLIs take the names and the floor from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import numpy as np

MEAN, FOREGROUND_WEIGHTED, FLOORED = "mean", "foreground_weighted", "floored"
AGGREGATIONS = (FOREGROUND_WEIGHTED, FLOORED, MEAN)
DEFAULT_AGGREGATION = FOREGROUND_WEIGHTED
MASKLESS_AGGREGATION = MEAN          # no masks, no foreground: every tile counts the same
DEFAULT_FOREGROUND_FLOOR = 0.5
_FIXED_FLOORS = {MEAN: 1.0, FOREGROUND_WEIGHTED: 0.0}
_NO_FOREGROUND = 1e-6                # total weight below this: no tile sees foreground


@dataclass(frozen=True)
class Aggregation:
    """A rule name and, for ``floored``, its floor; ``combine`` applies it to one case's tiles."""
    rule: str = DEFAULT_AGGREGATION
    foreground_floor: float = DEFAULT_FOREGROUND_FLOOR

    def __post_init__(self):
        if self.rule not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.rule!r}")
        if not 0.0 <= float(self.foreground_floor) <= 1.0:
            raise ValueError(f"foreground_floor must lie in [0, 1], got {self.foreground_floor}")

    @property
    def floor(self) -> float:
        return _FIXED_FLOORS.get(self.rule, float(self.foreground_floor))

    def weights(self, foreground: Sequence[float]) -> np.ndarray:
        """Normalised tile weights from the tiles' foreground fractions."""
        fg = np.clip(np.asarray(foreground, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if fg.size == 0:
            raise RuntimeError("no tiles were predicted for this case")
        w = self.floor + (1.0 - self.floor) * fg
        if w.sum() <= _NO_FOREGROUND:
            w = np.ones_like(w)
        return w / w.sum()

    def combine(self, foreground: Sequence[float], outputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """``outputs``: target -> (n_tiles, k) tile outputs; returns target -> (k,) case outputs."""
        w = self.weights(foreground)
        return {name: np.tensordot(w, np.asarray(v, dtype=np.float64), axes=1) for name, v in outputs.items()}


def average_folds(per_fold: Sequence[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Fold ensemble: the plain mean of each fold's case outputs."""
    return {n: np.mean([f[n] for f in per_fold], axis=0) for n in per_fold[0]}
