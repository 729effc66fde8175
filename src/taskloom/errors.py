"""The one exception type for mistakes a user can fix: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input named precisely (file, row, field); never a bug in taskloom."""
