"""``c.WodLdap`` refuses settings that would leak the directory's passwords: a readable password file, a plain link.

No directory needed: the checks run when the service (or ``wod users --ldap``) builds its :class:`Directory`.
"""

import pytest
from traitlets import TraitError

from wod_jupyterhub.directory import Directory, WodLdap


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_bind_password_file_others_may_read_is_refused(tmp_path, mode):
    secret = tmp_path / "bind"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    with pytest.raises(TraitError, match=r"no access for its group or others \(chmod 600\)") as e:
        WodLdap(bind_password_file=str(secret)).read_bind_password()
    assert "s3cret" not in str(e.value)
    secret.chmod(0o600)
    assert WodLdap(bind_password_file=str(secret)).read_bind_password() == "s3cret"


@pytest.mark.parametrize(
    "settings, refused",
    [
        (dict(uri="ldap://ldap.example.org"), True),
        (dict(uri="ldap://10.0.0.5:389"), True),
        (dict(uri="ldap://ldap.example.org", start_tls=True), False),
        (dict(uri="ldaps://ldap.example.org"), False),
        (dict(uri="ldap://127.0.0.1:3389"), False),
        (dict(uri="ldap://[::1]:389"), False),
        (dict(uri="ldap://localhost"), False),
        (dict(uri="ldap://ldap.example.org", allow_plaintext=True), False),
        (dict(uri=""), False),
    ],
)
def test_a_plain_ldap_uri_to_another_host_is_refused(settings, refused):
    if refused:
        with pytest.raises(TraitError, match="sends the passwords in clear"):
            Directory(WodLdap(**settings), bind_password="x")
    else:
        Directory(WodLdap(**settings), bind_password="x")
