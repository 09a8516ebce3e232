import pytest

from wod_jupyterhub import passwords
from wod_jupyterhub.passwords import DEFAULT_ALPHABET


def test_generate_uses_alphabet_and_length():
    pw = passwords.generate(20, DEFAULT_ALPHABET)
    assert len(pw) == 20 and set(pw) <= set(DEFAULT_ALPHABET)
    assert not set("0O1lI") & set(DEFAULT_ALPHABET)
    assert passwords.generate() != passwords.generate()


def test_hash_verify_and_plain_never_stored():
    pw = passwords.generate()
    h = passwords.hash_password(pw)
    assert pw not in h and h.startswith(f"scrypt${passwords.STUDENT_COST}$")
    assert passwords.verify_password(pw, h)
    assert not passwords.verify_password(pw + "x", h)
    assert passwords.hash_password(pw) != h  # salted


@pytest.mark.parametrize(
    "length, alphabet, cost",
    [
        (12, DEFAULT_ALPHABET, passwords.STUDENT_COST),  # the defaults: 70 bits
        (11, DEFAULT_ALPHABET, passwords.STUDENT_COST),  # 64.2 bits
        (10, DEFAULT_ALPHABET, passwords.WEAK_STUDENT_COST),  # 58 bits
        (16, "0123456789abcdef", passwords.STUDENT_COST),  # exactly 64
        (15, "0123456789abcdef", passwords.WEAK_STUDENT_COST),
        (20, "aaaaaaaaaaaaaaaabc", passwords.WEAK_STUDENT_COST),  # 3 distinct symbols, not 18
    ],
)
def test_hash_cost_follows_the_generated_passwords_strength(length, alphabet, cost):
    assert passwords.cost_for(length, alphabet) == cost


def test_the_hash_cost_setting():
    from traitlets import TraitError

    from wod_jupyterhub.config import Wod

    assert Wod().password_hash_cost == passwords.STUDENT_COST
    assert Wod(password_length=8).password_hash_cost == passwords.WEAK_STUDENT_COST
    assert Wod(password_hash_cost=14).password_hash_cost == 14
    for bad in (0, 19, -3):
        with pytest.raises(TraitError, match="password_hash_cost must be between 1 and 18"):
            Wod(password_hash_cost=bad)


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
