"""Console-script entry points (pyproject.toml): each runs its command's ``main`` and exits with its status."""
import sys


def predict() -> None:
    from nnunet_mtl.cli.predict import main
    sys.exit(main())


def classify() -> None:
    from nnunet_mtl.cli.classify import main
    sys.exit(main())


def pipeline() -> None:
    from nnunet_mtl.cli.pipeline import main
    sys.exit(main())
