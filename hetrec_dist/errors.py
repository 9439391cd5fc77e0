"""The one exception type for mistakes a user can fix; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input, a bad option or a state of files the user must resolve (never a bug)."""
