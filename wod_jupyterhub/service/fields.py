"""What a caller's text may hold: customer ids, addresses and workshop names, over REST and mail alike."""

import re

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: str) -> bool:
    """Whether ``value`` holds no control character."""
    return CONTROL.search(value) is None
