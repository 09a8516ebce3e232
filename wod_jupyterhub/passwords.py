"""Student passwords: generation, hashing, and sealing for the outbox."""

import base64
import hashlib
import hmac
import math
import os
import secrets
from pathlib import Path

# Letters and digits a person can read back without doubt: no 0/O, 1/l/I.
DEFAULT_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

#: the cost of generated passwords of at least ``STRONG_BITS`` bits, and of weaker ones
STUDENT_COST = 4
WEAK_STUDENT_COST = 11
STRONG_BITS = 64
ADMIN_COST = 15
_MAXMEM = 256 * 1024 * 1024


def generate(length: int = 12, alphabet: str = DEFAULT_ALPHABET) -> str:
    """A random password of ``length`` symbols of ``alphabet``, drawn by :mod:`secrets`."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def cost_for(length: int, alphabet: str) -> int:
    """The scrypt cost for passwords of ``length`` symbols drawn uniformly from ``alphabet``."""
    bits = length * math.log2(max(2, len(set(alphabet))))
    return STUDENT_COST if bits >= STRONG_BITS else WEAK_STUDENT_COST


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, cost: int = STUDENT_COST, r: int = 8, p: int = 1) -> str:
    """scrypt (RFC 7914, the standard library's), as ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<key b64>``: each hash carries its cost."""
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**cost, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${cost}${r}${p}${_b64(salt)}${_b64(key)}"


def hash_params(stored: str) -> tuple:
    """``(cost, r, p)`` of an ``scrypt$cost$r$p$salt$key`` hash; the students' when it is not one."""
    parts = stored.split("$")
    try:
        return int(parts[1]), int(parts[2]), int(parts[3])
    except (IndexError, ValueError):
        return STUDENT_COST, 8, 1


def cheap_hash(stored: str) -> bool:
    """Whether checking ``stored`` costs no more than a generated password's hash (cheaper than a thread hand-off)."""
    return hash_params(stored)[0] <= STUDENT_COST


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash; False for any malformed hash."""
    if not password or not stored:
        return False
    try:
        scheme, cost, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=2 ** int(cost), r=int(r), p=int(p), maxmem=_MAXMEM, dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def refusal_time(stored: list, tries: int = 3) -> float:
    """Seconds the costliest of ``stored`` takes to refuse a wrong password (the median of ``tries``).

    What every refusal of a login waits for, whatever its name costs to check.
    """
    import statistics
    import time

    slowest = 0.0
    for params in {hash_params(h) for h in stored}:
        sample = next(h for h in stored if hash_params(h) == params)
        times = []
        for _ in range(tries):
            started = time.perf_counter()
            verify_password("not the password", sample)
            times.append(time.perf_counter() - started)
        slowest = max(slowest, statistics.median(times))
    return slowest


class Sealer:
    """Symmetric sealing (Fernet: AES-128-CBC + HMAC-SHA256) of passwords that must wait.

    A rotated password has to reach the portal even if the portal is down or
    the service crashes before the callback leaves, so the outbox must keep
    it; sealed, the database alone reveals nothing.
    """

    def __init__(self, key: str):
        from cryptography.fernet import Fernet

        self._fernet = Fernet(key.encode() if isinstance(key, str) else key)

    @classmethod
    def from_settings(cls, wod) -> "Sealer":
        """The sealer of ``c.Wod.secret_key``, else of the key kept in ``secret_key_file`` (made on first use)."""
        if wod.secret_key:
            return cls(wod.secret_key)
        return cls(load_or_create_key(wod.secret_key_file))

    def seal(self, text: str) -> str:
        """``text`` encrypted and authenticated, as text fit for the database."""
        return self._fernet.encrypt(text.encode()).decode()

    def open(self, token: str) -> str:
        """The text :meth:`seal` sealed into ``token``; a token sealed with another key raises."""
        return self._fernet.decrypt(token.encode()).decode()


def load_or_create_key(path: str) -> str:
    from cryptography.fernet import Fernet

    p = Path(path)
    try:
        key = p.read_text().strip()
    except FileNotFoundError:
        pass
    else:
        if p.stat().st_mode & 0o077:  # made readable by others (a copy, an older version): owner only again
            p.chmod(0o600)
        return key
    key = Fernet.generate_key().decode()
    # O_EXCL: two processes starting at once must end up with one key, not two.
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return p.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
