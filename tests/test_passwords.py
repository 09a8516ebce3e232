import pytest

from wod_jupyterhub import passwords
from wod_jupyterhub.config import DEFAULT_ALPHABET


def test_generate_uses_alphabet_and_length():
    pw = passwords.generate(20, DEFAULT_ALPHABET)
    assert len(pw) == 20 and set(pw) <= set(DEFAULT_ALPHABET)
    assert not set("0O1lI") & set(DEFAULT_ALPHABET)
    assert passwords.generate() != passwords.generate()


def test_hash_verify_and_plain_never_stored():
    pw = passwords.generate()
    h = passwords.hash_password(pw)
    assert pw not in h and h.startswith("scrypt$11$")
    assert passwords.verify_password(pw, h)
    assert not passwords.verify_password(pw + "x", h)
    assert passwords.hash_password(pw) != h  # salted


@pytest.mark.parametrize("bad", ["", "scrypt$", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$aa$bb", None])
def test_malformed_hash_is_refused_not_raised(bad):
    assert passwords.verify_password("whatever", bad) is False


def test_sealer_roundtrip_and_key_file(tmp_path):
    key = passwords.load_or_create_key(str(tmp_path / "k"))
    assert passwords.load_or_create_key(str(tmp_path / "k")) == key
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    box = passwords.Sealer(key)
    sealed = box.seal("s3cret")
    assert "s3cret" not in sealed and box.open(sealed) == "s3cret"
