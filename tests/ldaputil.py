"""A real OpenLDAP ``slapd`` on loopback, with its own configuration and database in a temporary folder.

Debian's ``slapd`` and ``ldap-utils`` (installed by ``make test``). The
directory has the suffix ``dc=example,dc=org``, an admin
``cn=admin,dc=example,dc=org`` and ``ou=people`` for the seats' entries,
which ``wod users create --ldap`` adds. Its ACL lets an entry bind with its
own ``userPassword`` and no one else read it, as a real directory would.
"""

import os
import shutil
import socket
import subprocess
import time

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "Ldap-Admin-Pw-7"
SEAT_DN = f"uid=student{{N}},ou=people,{SUFFIX}"

_SCHEMAS = ("core", "cosine", "inetorgperson")


def available() -> bool:
    return all(shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin") for p in ("slapd", "slapadd", "ldapadd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_ldif(db: str) -> str:
    hashed = subprocess.run(
        ["/usr/sbin/slappasswd", "-s", ADMIN_PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    schemas = "".join(f"include: file:///etc/ldap/schema/{name}.ldif\n\n" for name in _SCHEMAS)
    return f"""dn: cn=config
objectClass: olcGlobal
cn: config

dn: cn=module,cn=config
objectClass: olcModuleList
cn: module
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {ADMIN_DN}
olcRootPW: {hashed}
olcDbDirectory: {db}
olcDbMaxSize: 67108864
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read
"""


_BASE = f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people
"""


class Slapd:
    """One ``slapd`` in ``folder``: ``start()``, ``stop()`` (its data stays), ``start()`` again."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.port = _free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self.proc = None
        self.confdir = os.path.join(self.folder, "slapd.d")
        db = os.path.join(self.folder, "db")
        os.makedirs(self.confdir)
        os.makedirs(db)
        ldif = os.path.join(self.folder, "config.ldif")
        with open(ldif, "w") as f:
            f.write(_config_ldif(db))
        subprocess.run(["/usr/sbin/slapadd", "-n", "0", "-F", self.confdir, "-l", ldif], check=True, capture_output=True)
        base = os.path.join(self.folder, "base.ldif")
        with open(base, "w") as f:
            f.write(_BASE)
        subprocess.run(["/usr/sbin/slapadd", "-n", "1", "-F", self.confdir, "-l", base], check=True, capture_output=True)

    def start(self) -> None:
        # -d 0: in the foreground, so that the fixture owns the process and stops it.
        self.proc = subprocess.Popen(
            ["/usr/sbin/slapd", "-d", "0", "-h", f"{self.uri}/", "-F", self.confdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError as e:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slapd exited with {self.proc.returncode}") from e
                time.sleep(0.05)
        raise RuntimeError("slapd did not listen in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def can_bind(uri: str, dn: str, password: str) -> bool:
    """Whether a simple bind as ``dn`` with ``password`` succeeds (``ldapwhoami``, another client than the service's)."""
    r = subprocess.run(
        ["ldapwhoami", "-x", "-H", uri, "-D", dn, "-w", password], capture_output=True, text=True, timeout=20
    )
    return r.returncode == 0
