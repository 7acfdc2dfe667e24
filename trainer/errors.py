"""The trainer's errors: ArtnoteError subclasses, so the CLI shows them as one line."""

from artnote.errors import ArtnoteError


class TrainerError(ArtnoteError):
    """A fine-tuning run cannot start or continue as asked (numbers, folders, checkpoints)."""
