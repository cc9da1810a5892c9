"""Console-script entry points (pyproject.toml): each runs its command's ``main`` through ``cli.run``."""
from nnunet_mtl.cli.run import run


def predict() -> None:
    from nnunet_mtl.cli.predict import main
    run(main)


def classify() -> None:
    from nnunet_mtl.cli.classify import main
    run(main)


def pipeline() -> None:
    from nnunet_mtl.cli.pipeline import main
    run(main)
