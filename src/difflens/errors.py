"""User-facing errors.

Every problem with the user's input raises ``InputError`` (a ``ValueError``) whose
message is a single line that says what was expected, what was received and how to fix
it. The CLI prints that line alone, without a traceback, and exits non-zero.
"""


class InputError(ValueError):
    """Bad input from the user: a file, a model name, an option or an output directory."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class StoreError(InputError):
    """A run store that cannot be written or read as asked."""


class DifflensWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. truncated prompts)."""
