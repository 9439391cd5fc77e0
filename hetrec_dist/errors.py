"""The one exception type for mistakes a user can fix, the one warning type for inputs that convert but
deserve a look, and the one for a slower fallback; the CLI prints each as a single line."""

import warnings


class UserError(Exception):
    """Bad input, a bad option or a state of files the user must resolve (never a bug)."""


class InputWarning(UserWarning):
    """An input that converts, by a documented rule, but where two sources disagree or an option replaced a
    value the file gives (docs/inputs.md). Shown once per distinct message, not under --quiet."""


class PerformanceWarning(UserWarning):
    """A faster path is unavailable and a slower one gives the same values (e.g. no C compiler for
    physics.compiled). Shown once, as one line."""


def warn_input(message):
    warnings.warn(InputWarning(message), stacklevel=2)
