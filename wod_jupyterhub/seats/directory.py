"""The seats' directory passwords: ``c.WodLdap``, and the client that sets them (``ldap: true`` workshops)."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import ssl
import urllib.parse

from traitlets import Bool, Float, List, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from ..errors import Unprocessable

#: Password Modify extended operation (RFC 3062)
PASSWORD_MODIFY = "1.3.6.1.4.1.4203.1.11.1"
#: ``c.WodLdap.password_hash`` -> the ldap3 scheme of a ``userPassword`` written without Password Modify
HASHES = {"SSHA": "SALTED_SHA", "SSHA256": "SALTED_SHA256", "SSHA512": "SALTED_SHA512"}


class DirectoryUnreachable(Unprocessable):
    """The directory could not be reached or did not answer in time: worth trying again."""

    code = "directory_unreachable"


class DirectoryRefused(Unprocessable):
    """The directory answered no (a missing entry, a refused bind): trying again changes nothing."""

    code = "directory_refused"


class WodLdap(Configurable):
    """The LDAP directory whose seat entries ``ldap: true`` workshops keep in step with the seats' passwords."""

    uri = Unicode(
        "",
        help="""The directory's URI: ``ldap://host:389`` (with ``start_tls``) or ``ldaps://host:636``.

        Empty (the default): no directory; a CREATE of an ``ldap: true``
        workshop then fails with a sentence saying so.
        """,
    ).tag(config=True)

    @validate("uri")
    def _check_uri(self, proposal):
        value = proposal["value"].strip()
        if value and not value.lower().startswith(("ldap://", "ldaps://")):
            raise TraitError(f"WodLdap.uri must start with ldap:// or ldaps://, not {value!r}")
        return value

    start_tls = Bool(
        False, help="Upgrade an ``ldap://`` connection with StartTLS before binding (the certificate is verified)."
    ).tag(config=True)

    allow_plaintext = Bool(
        False,
        help="""Allow a plain ``ldap://`` URI to a host other than loopback without ``start_tls``.

        Off by default: the bind DN's password and the seats' passwords
        would cross the network in clear. Turn on only for a directory
        reached over a link that is private by other means.
        """,
    ).tag(config=True)

    ca_file = Unicode(
        "", help="PEM file of the CAs that sign the directory's certificate (``ldaps://`` or StartTLS); default: the system's."
    ).tag(config=True)

    bind_dn = Unicode(
        "",
        help="""The DN the service binds as to set the seats' passwords, e.g. ``cn=admin,dc=example,dc=org``.

        It needs the right to change the seats' ``userPassword`` (and, for
        ``wod users create --ldap``, to add their entries).
        """,
    ).tag(config=True)

    bind_password_file = Unicode(
        "",
        help="""A file holding the bind DN's password (its first line), readable by the service alone.

        The password is never written in the configuration: it comes from
        this file, else from the environment variable ``bind_password_env``.
        Read once when the service starts.
        """,
    ).tag(config=True)

    bind_password_env = Unicode(
        "WOD_LDAP_PASSWORD",
        help="The environment variable holding the bind DN's password when ``bind_password_file`` is not set.",
    ).tag(config=True)

    seat_dn = Unicode(
        "uid=student{N},ou=people,dc=example,dc=org",
        help="The DN of seat N's entry; ``{N}`` is the seat's number.",
    ).tag(config=True)

    @validate("seat_dn")
    def _check_seat_dn(self, proposal):
        from ldap3.core.exceptions import LDAPInvalidDnError
        from ldap3.utils.dn import parse_dn

        value = proposal["value"]
        if "{N}" not in value:
            raise TraitError(f"WodLdap.seat_dn must hold {{N}} (the seat's number), not {value!r}")
        try:
            parse_dn(value.replace("{N}", "1"))
        except (LDAPInvalidDnError, ValueError, KeyError, IndexError) as e:
            raise TraitError(f"WodLdap.seat_dn {value!r} is not a DN: {e}") from None
        return value

    connect_timeout = Float(5.0, help="Seconds to open a connection to the directory.").tag(config=True)

    timeout = Float(10.0, help="Seconds to wait for each answer of the directory.").tag(config=True)

    retry_for = Float(
        300.0,
        help="""Seconds a rotation keeps trying a directory it cannot reach before giving up.

        A CREATE waits that long before its ``assign`` step (the portal hears
        nothing meanwhile), then fails, and its seat is not handed out. A
        CLEANUP or RESET then goes on, with a warning in its journal (the
        seat's next CREATE sets a new directory password before it is handed
        out). A PURGE tries once. A restart of the service meanwhile resumes
        the operation at this step with the same password.
        """,
    ).tag(config=True)

    @validate("connect_timeout", "timeout", "retry_for")
    def _positive(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"WodLdap.{proposal['trait'].name} must be more than 0 seconds, not {proposal['value']}")
        return proposal["value"]

    password_hash = Unicode(
        "SSHA",
        help=f"""How a ``userPassword`` is hashed when the directory does not offer Password Modify: one of {", ".join(HASHES)}.

        The directory must know the scheme (OpenLDAP knows ``SSHA``; the SHA-2 ones need its ``pw-sha2`` module).
        """,
    ).tag(config=True)

    @validate("password_hash")
    def _check_hash(self, proposal):
        if proposal["value"] not in HASHES:
            raise TraitError(f"WodLdap.password_hash must be one of {', '.join(HASHES)}, not {proposal['value']!r}")
        return proposal["value"]

    object_classes = List(
        Unicode(),
        help="The object classes of the entries ``wod users create --ldap`` adds (with ``uid``, ``cn`` and ``sn``).",
    ).tag(config=True)

    @default("object_classes")
    def _object_classes_default(self):
        return ["inetOrgPerson"]

    def read_bind_password(self) -> str:
        """The bind DN's password, from ``bind_password_file`` or ``$<bind_password_env>``; '' when neither has one.

        The file must be the service's user's with no access for its group
        or others (``chmod 600``): else a TraitError saying so.
        """
        if self.bind_password_file:
            try:
                with open(self.bind_password_file, encoding="utf-8") as f:
                    st = os.fstat(f.fileno())
                    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                        raise TraitError(
                            f"WodLdap.bind_password_file {self.bind_password_file} must belong to the service's user with "
                            f"no access for its group or others (chmod 600), not mode {st.st_mode & 0o777:04o} of uid {st.st_uid}."
                        )
                    return f.readline().rstrip("\r\n")
            except OSError as e:
                raise TraitError(f"WodLdap.bind_password_file {self.bind_password_file} cannot be read: {e.strerror}") from None
        return os.environ.get(self.bind_password_env, "")

    def check_transport(self) -> None:
        """A TraitError when passwords would cross the network in clear (``ldap://`` to a non-loopback host, no StartTLS)."""
        uri = self.uri.lower()
        if not uri.startswith("ldap://") or self.start_tls or self.allow_plaintext:
            return
        host = urllib.parse.urlsplit(self.uri).hostname or "localhost"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise TraitError(
                f"WodLdap.uri {self.uri} sends the passwords in clear to {host}: use ldaps://, set c.WodLdap.start_tls = True, "
                "or, on a link private by other means, c.WodLdap.allow_plaintext = True."
            )


class Directory:
    """Sets the seats' passwords in the directory of ``c.WodLdap`` (blocking calls: run them in a thread)."""

    def __init__(self, settings: WodLdap, bind_password: str | None = None):
        self.settings = settings
        settings.check_transport()
        # Read now, once: the service drops the secret variables from its environment after its start.
        self._password = settings.read_bind_password() if bind_password is None else bind_password

    @property
    def configured(self) -> bool:
        """Whether a directory is set (``c.WodLdap.uri``)."""
        return bool(self.settings.uri)

    def seat_dn(self, n: int) -> str:
        return self.settings.seat_dn.replace("{N}", str(int(n)))

    def where(self) -> str:
        """The directory's URI, for a message."""
        return self.settings.uri or "(no c.WodLdap.uri)"

    # ---- connections

    def _server(self):
        import ldap3

        s = self.settings
        tls = None
        if s.uri.lower().startswith("ldaps://") or s.start_tls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=s.ca_file or None)
        return ldap3.Server(s.uri, connect_timeout=s.connect_timeout, tls=tls, get_info=ldap3.DSA)

    def _connect(self, dn: str, password: str):
        """A connection bound as ``dn``; raises :class:`DirectoryUnreachable` or :class:`DirectoryRefused`."""
        import ldap3
        from ldap3.core import exceptions as x

        if not self.configured:
            raise DirectoryRefused("no directory is configured (c.WodLdap.uri)")
        conn = ldap3.Connection(
            # ldap3 packs the receive timeout into a struct timeval: whole seconds.
            self._server(), user=dn, password=password, receive_timeout=math.ceil(self.settings.timeout), raise_exceptions=True
        )
        try:
            conn.open()
            if self.settings.start_tls and not self.settings.uri.lower().startswith("ldaps://"):
                conn.start_tls()
            conn.bind()
        except (x.LDAPCommunicationError, x.LDAPSocketOpenError, OSError) as e:
            _close(conn)
            raise DirectoryUnreachable(f"the directory {self.where()} cannot be reached: {_reason(e)}") from None
        except x.LDAPException as e:
            _close(conn)
            raise DirectoryRefused(f"the directory {self.where()} refused the bind as {dn}: {_reason(e)}") from None
        return conn

    def _admin(self):
        if not self.settings.bind_dn:
            raise DirectoryRefused("c.WodLdap.bind_dn is not set: the service cannot change the seats' passwords")
        return self._connect(self.settings.bind_dn, self._password)

    # ---- what the verbs and the commands do

    @contextlib.contextmanager
    def _asking(self, what: str):
        """Turn what ldap3 raises while asking for ``what`` into :class:`DirectoryUnreachable` or :class:`DirectoryRefused`."""
        from ldap3.core import exceptions as x

        try:
            yield
        except (x.LDAPCommunicationError, OSError) as e:
            raise DirectoryUnreachable(f"the directory {self.where()} stopped answering: {_reason(e)}") from None
        except x.LDAPException as e:
            raise DirectoryRefused(f"the directory {self.where()} refused {what}: {_reason(e)}") from None

    def set_passwords(self, passwords: dict[int, str]) -> dict:
        """Set each seat's directory password (``{N: password}``); the step's detail: how, for which seats."""
        conn = self._admin()
        try:
            modify = self._supports_password_modify(conn)
            for n in sorted(passwords):
                dn = self.seat_dn(n)
                with self._asking(f"the password of {dn}"):
                    if modify:
                        conn.extend.standard.modify_password(user=dn, new_password=passwords[n])
                    else:
                        self._write_hashed(conn, dn, passwords[n])
        finally:
            _close(conn)
        return {"seats": sorted(passwords), "method": "password-modify" if modify else f"userPassword {{{self.settings.password_hash}}}"}

    @staticmethod
    def _supports_password_modify(conn) -> bool:
        info = conn.server.info
        return bool(info) and any(ext[0] == PASSWORD_MODIFY for ext in (info.supported_extensions or ()))

    def _write_hashed(self, conn, dn: str, password: str) -> None:
        import ldap3
        from ldap3.utils.hashed import hashed

        scheme = getattr(ldap3, "HASHED_" + HASHES[self.settings.password_hash])
        conn.modify(dn, {"userPassword": [(ldap3.MODIFY_REPLACE, [hashed(scheme, password)])]})

    def can_bind(self, n: int, password: str) -> bool:
        """Whether seat ``n``'s entry binds with ``password`` (``wod check`` and the tests)."""
        try:
            _close(self._connect(self.seat_dn(n), password))
            return True
        except DirectoryRefused:
            return False

    def create_entries(self, numbers) -> tuple[int, int]:
        """Add the entries of seats ``numbers`` that are missing; (added, already there).

        Each entry: ``c.WodLdap.object_classes`` (``inetOrgPerson``) with
        ``uid``, ``cn`` and ``sn`` ``student<N>``, and the attribute of its
        RDN; no password: nobody binds as a seat before its first CREATE.
        """
        from ldap3.core import exceptions as x
        from ldap3.utils.dn import parse_dn

        conn = self._admin()
        added = existing = 0
        try:
            for n in numbers:
                dn = self.seat_dn(n)
                name = f"student{n}"
                attributes = {"uid": name, "cn": name, "sn": name}
                rdn_attr, rdn_value, _ = parse_dn(dn)[0]
                attributes[rdn_attr] = rdn_value
                with self._asking(f"to add {dn}"):
                    try:
                        conn.add(dn, list(self.settings.object_classes), attributes)
                        added += 1
                    except x.LDAPEntryAlreadyExistsResult:
                        existing += 1
        finally:
            _close(conn)
        return added, existing


def _close(conn) -> None:
    try:
        conn.unbind()
    except Exception:  # closing a broken connection: nothing left to tell
        pass


def _reason(e: Exception) -> str:
    """ldap3's sentence for an error (its result's description), without the request it was about."""
    description = getattr(e, "description", None)
    message = getattr(e, "message", None)
    if description:
        return f"{description}{f' ({message})' if message else ''}"
    return str(e) or e.__class__.__name__
