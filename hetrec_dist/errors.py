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


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says memory ran out: MemoryError (Python, numpy), torch's OutOfMemoryError (a GPU), the
    RuntimeError of torch's CPU allocator ("can't allocate memory"), a thread that could not get its stack, or
    an OSError ENOMEM (a library that could not be mapped, among others)."""
    import errno

    message = str(error)
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or (isinstance(error, RuntimeError) and ("can't allocate memory" in message
                                                     or "can't start new thread" in message))
            or (isinstance(error, OSError) and error.errno == errno.ENOMEM)
            or (isinstance(error, ImportError) and "failed to map segment" in message))
