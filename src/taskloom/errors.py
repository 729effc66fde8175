"""The one exception type for mistakes a user can fix: the CLI prints it as one line and exits 2."""

import re

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@\"'<>]*):[^\s\"'<>]*@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: a URL a user typed with credentials
    in it (--host, an endpoint, a webhook) must not come back in a message, a log line or a report."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


class UserError(Exception):
    """Bad input named precisely (file, row, field); never a bug in taskloom. URL passwords in the
    message are masked (`redact`), so no error line echoes one."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))

    def __str__(self) -> str:
        # One line whatever the input held: a file name or value with a line break is shown escaped.
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")
