"""The one exception type for mistakes a user can fix, and the one warning type for inputs that convert
but deserve a look; the CLI prints either as a single line."""

import warnings


class UserError(Exception):
    """Bad input, a bad option or a state of files the user must resolve (never a bug)."""


class InputWarning(UserWarning):
    """An input that converts, by a documented rule, but where two sources disagree or an option replaced a
    value the file gives (docs/inputs.md). Shown once per distinct message, not under --quiet."""


def warn_input(message):
    warnings.warn(InputWarning(message), stacklevel=2)
