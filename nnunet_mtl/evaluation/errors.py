"""The one error type of whole-case evaluation."""


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated together; the message names the case (and what is wrong)."""
