"""What a caller's text may hold: customer ids, addresses and workshop names, over REST and mail alike.

A control character (NUL, an escape, a newline, C1 controls, the Unicode
line and paragraph separators) in a customer id or an address would reach
log lines, callbacks to the portal, mail headers and the database: refused
wherever such a field enters. Core module: imports nothing.
"""

import re

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: str) -> bool:
    """Whether ``value`` holds no control character."""
    return CONTROL.search(value) is None
