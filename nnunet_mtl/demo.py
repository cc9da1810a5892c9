"""The demo's budget: what ``pipeline.py --demo`` trains and the notebook's ``demo`` budget, defined once.

Enough to show every step on a CPU in minutes; the numbers say nothing about real data."""

from nnunet_mtl.knobs import BUDGETS

DEMO_BUDGET = BUDGETS["demo"]
DEMO_SHRINK = {"3d": dict(max_features=24, batch_size=2, n_stages=4, patch_size=(16, 32, 32)),
               "2d": dict(max_features=32, batch_size=4, n_stages=5)}
