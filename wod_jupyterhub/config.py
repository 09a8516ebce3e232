"""The settings every part shares, read from one ``jupyterhub_config.py``."""

import ipaddress
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from traitlets import Bool, CaselessStrEnum, Dict, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from .errors import BadRequest, Unprocessable
from .limits import limits_from_meta, parse_size
from .passwords import DEFAULT_ALPHABET, cost_for

#: the package's folder (the top one, wherever this module sits in it)
_PACKAGE = Path(os.sys.modules[__name__.partition(".")[0]].__file__).resolve().parent


def share_dir() -> Path:
    """Where the sample workshops and the skeleton live.

    Inside the package once installed (the wheel carries ``share/`` as
    ``wod_jupyterhub/share``, see setup.py), beside it in a source checkout.
    """
    installed = _PACKAGE / "share"
    return installed if installed.is_dir() else _PACKAGE.parent / "share"


#: the notebook every workshop must have and that opens first (``c.Wod.readme_notebook``)
README_NOTEBOOK = "0-ReadMeFirst.ipynb"

#: where a process may leave files outside its home without being given a place
TEMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock")

# fullmatch, not match with $: "$" also matches before a final newline ("student1\n").
STUDENT_NAME = re.compile(r"student([1-9][0-9]*)")


def student_number(name: str):
    """``student12`` → 12; anything else → None."""
    m = STUDENT_NAME.fullmatch(name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


def check_student_number(n) -> int:
    """``n`` when it is a whole number; else 400 ``bad_student`` (``Wod.check_student`` also checks the range)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise BadRequest(f"Student number must be a whole number, not {n!r}.", code="bad_student")
    return n


class Wod(Configurable):
    """Settings shared by ``WodAuthenticator``, ``WodSpawner`` and the ``wod`` service."""

    db_url = Unicode(
        "sqlite:///wod.sqlite",
        help="""SQLAlchemy URL of the database the hub parts and the service share.

        SQLite (the default, a file beside the config) suits one machine;
        use PostgreSQL (``postgresql+psycopg://…``) when several service
        processes or hosts share the state.
        """,
    ).tag(config=True)

    notebooks = List(
        Unicode(),
        help="""Notebooks roots holding ``WKSHP-<Name>`` folders, public first.

        A workshop found in several roots is taken from the first one, as the
        original did, unless ``prefer_private`` is set. Defaults to the sample
        workshops shipped in ``share/workshops``.
        """,
    ).tag(config=True)

    @default("notebooks")
    def _notebooks_default(self):
        return [str(share_dir() / "workshops")]

    prefer_private = Bool(
        False,
        help="Take a workshop found in several notebooks roots from the last root instead of the first.",
    ).tag(config=True)

    students_root = Unicode(
        "students",
        help="""Folder holding every student home ``student<N>``.

        Nothing is ever written outside it; a home that resolves elsewhere
        (through a symlink) is refused.
        """,
    ).tag(config=True)

    @validate("students_root")
    def _abs_students_root(self, proposal):
        return str(Path(proposal["value"]).expanduser().absolute())

    skel = Unicode(
        help="Skeleton files copied into every home before the workshop (like /etc/skel). Defaults to ``share/skel``; empty for none.",
    ).tag(config=True)

    @default("skel")
    def _skel_default(self):
        return str(share_dir() / "skel")

    student_min = Integer(1, help="Lowest student number this backend serves.").tag(config=True)
    student_max = Integer(2000, help="Highest student number this backend serves.").tag(config=True)

    @validate("student_min", "student_max")
    def _positive(self, proposal):
        if proposal["value"] < 1:
            raise TraitError(f"{proposal['trait'].name} must be 1 or more, not {proposal['value']}")
        return proposal["value"]

    base_student_id = Integer(
        0,
        help="""Offset between this backend's student numbers and the portal's (the original's BASESTDID).

        The portal calls student ``N + base_student_id`` what this backend calls ``student<N>``.
        """,
    ).tag(config=True)

    variables = Dict(
        help="""Global template variables (``BRANDING``, ``WODBEEXTFQDN``, ``JPHUB`` …).

        Per-workshop variable files and the built-ins (``STDID``, ``PASSSTU`` …) win over these.
        The default names the platform (``BRANDING``, ``BRANDINGWOD``), so the
        sample workshops render with no configuration; setting this replaces it.
        """,
    ).tag(config=True)

    @default("variables")
    def _variables_default(self):
        return {"BRANDING": "Workshops-on-Demand", "BRANDINGWOD": "Workshops-on-Demand"}

    variables_dirs = List(
        Unicode(),
        help="Folders searched, in order, for ``variables_<WKSHP>.yml`` files; a later folder wins.",
    ).tag(config=True)

    scripts = List(
        Unicode(),
        help="Folders searched, public first then private, for the hooks ``create-``, ``post-copy-``, ``cleanup-`` and ``reset-<WKSHP>.sh``.",
    ).tag(config=True)

    compiled_dir = Unicode(
        help="""Where the scripts of ``compile:`` workshops are kept compiled: their texts, loaders and interpreters.

        Root's alone (the texts in a ``0700`` folder); made when missing. A
        seat gets a copy of its script's loader, never the text. Defaults to
        ``/var/lib/wod-jupyterhub/compiled`` as root, else
        ``~/.cache/wod-jupyterhub/compiled``. See the README's "Compiled scripts".
        """,
    ).tag(config=True)

    @default("compiled_dir")
    def _compiled_dir_default(self):
        if os.geteuid() == 0:
            return "/var/lib/wod-jupyterhub/compiled"
        return os.path.join(os.path.expanduser("~"), ".cache", "wod-jupyterhub", "compiled")

    @validate("compiled_dir")
    def _abs_compiled_dir(self, proposal):
        return os.path.abspath(proposal["value"])

    strict_undefined = Bool(
        True,
        help="Fail a render that prints an undefined variable (naming it, the file and the line). False renders it empty.",
    ).tag(config=True)

    clear_outputs = Bool(
        True,
        help="Clear every code cell's outputs and execution count when provisioning, so a fresh seat starts at 0 %.",
    ).tag(config=True)

    password_length = Integer(12, help="Length of the generated student passwords.").tag(config=True)

    @validate("password_length")
    def _sane_length(self, proposal):
        if not 8 <= proposal["value"] <= 128:
            raise TraitError("password_length must be between 8 and 128")
        return proposal["value"]

    password_alphabet = Unicode(
        DEFAULT_ALPHABET,
        help="Characters student passwords are drawn from. The default leaves out look-alikes (0/O, 1/l/I).",
    ).tag(config=True)

    @validate("password_alphabet")
    def _alphabet(self, proposal):
        if len(set(proposal["value"])) < 16:
            raise TraitError("password_alphabet needs at least 16 distinct characters")
        return proposal["value"]

    password_hash_cost = Integer(
        help="""scrypt cost (log2 of n) of the student password hashes the service stores.

        The default follows the generated passwords' strength
        (``password_length`` and ``password_alphabet``): 4 when they carry at
        least 64 bits, 11 below that (the README's "Passwords" says why). Each
        hash carries its cost, so changing this affects only the passwords
        rotated afterwards.
        """,
    ).tag(config=True)

    @default("password_hash_cost")
    def _cost_for_strength(self):
        return cost_for(self.password_length, self.password_alphabet)

    @validate("password_hash_cost")
    def _sane_cost(self, proposal):
        if not 1 <= proposal["value"] <= 18:
            raise TraitError(f"password_hash_cost must be between 1 and 18 (scrypt n = 2**cost), not {proposal['value']}")
        return proposal["value"]

    secret_key = Unicode(
        help="""Key sealing the passwords that wait in the callback outbox and on finished operations.

        The database holds only password hashes and sealed values; the key lives
        outside it. Read from ``$WOD_SECRET_KEY`` or ``secret_key_file`` when unset.
        """,
    ).tag(config=True)

    @default("secret_key")
    def _secret_key_default(self):
        return os.environ.get("WOD_SECRET_KEY", "")

    secret_key_file = Unicode(
        "wod_secret.key",
        help="File holding the sealing key when ``secret_key`` is unset; created (mode 0600) if missing.",
    ).tag(config=True)

    system_users = Bool(
        False,
        help="""Run each student as the Linux account ``student<N>`` (uid ``uid_base + N``).

        Needs root. When False every server runs as the hub's own user with
        its own HOME (demos and tests).
        """,
    ).tag(config=True)

    single_user_on_network = Bool(
        False,
        help="""Let the hub listen on an address other than loopback while ``system_users`` is False.

        In single-user mode every student's server and terminal runs as the
        hub's own account: a student can read the wod database, the key file,
        the cookie secret and the hub's environment, and act as any other
        student. That is fine for a demo on 127.0.0.1, not for a room. The
        hub refuses to start in that mode on any other address unless this
        is set, to say that every participant is trusted.
        """,
    ).tag(config=True)

    def check_exposure(self, bind_url: str) -> str | None:
        """A sentence when single-user mode would be reachable from the network (see ``single_user_on_network``)."""
        if self.system_users or self.single_user_on_network:
            return None
        host = urlsplit(bind_url).hostname or ""
        if host == "localhost":
            return None
        try:
            if ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            pass
        return (
            f"The hub would listen on {bind_url} in single-user mode (c.Wod.system_users = False), where every "
            "student runs as the hub's own account and can read its secrets. Use system users, bind the hub to "
            "127.0.0.1, or set c.Wod.single_user_on_network = True if every participant is trusted."
        )

    allow_single_origin = Bool(
        False,
        help="""Let system-users mode run with every server on the hub's own web origin (tests only).

        With ``system_users`` the hub does not start unless
        ``c.JupyterHub.subdomain_host`` gives each server its own origin and
        ``c.JupyterHub.cookie_host_prefix_enabled`` keeps the hub's cookies
        to the hub's host: on one origin, a page a student serves can read
        the hub's cookies in the browser of whoever opens it (another
        student, an admin) and act as them. Set this only for a test whose
        browsers are all the test's own.
        """,
    ).tag(config=True)

    def check_origin(self, subdomain_host: str, cookie_host_prefix: bool) -> str | None:
        """A sentence when system-users mode would serve students' pages on the hub's origin (see ``allow_single_origin``)."""
        if not self.system_users or self.allow_single_origin or (subdomain_host and cookie_host_prefix):
            return None
        missing = [name for name, ok in (("c.JupyterHub.subdomain_host", subdomain_host),
                                         ("c.JupyterHub.cookie_host_prefix_enabled = True", cookie_host_prefix)) if not ok]  # fmt: skip
        return (
            f"System-users mode needs {' and '.join(missing)}: without them every student's server shares the hub's "
            "web origin, and a page a student serves can act as whoever opens it. Give the hub a wildcard domain "
            "(e.g. subdomain_host = 'https://wod.example.com' with *.wod.example.com pointing at it), or set "
            "c.Wod.allow_single_origin = True for a test."
        )

    uid_base = Integer(10000, help="With ``system_users``, student N has uid and gid ``uid_base + N``.").tag(config=True)

    home_size_limit = Unicode(
        "",
        help="""Most disk one seat's home may take (``500M``, ``2G``, or bytes; empty: no limit).

        Checked when a seat is cleaned up: the home of a ``reset: true``
        workshop, kept until its RESET, is erased all the same when it is
        over the limit (the seat stays kept), so one participant cannot hold
        the homes' disk full for the others. During a session only the file
        system can stop a student: where it has quotas (ext4 or XFS mounted
        with ``usrquota``), give each uid ``uid_base + N`` a quota of this
        size (``setquota``); the default ext4 mount has none.
        """,
    ).tag(config=True)

    @validate("home_size_limit")
    def _size_limit(self, proposal):
        value = str(proposal["value"]).strip()
        if value:
            try:
                parse_size(value)
            except ValueError as e:
                raise TraitError(f"home_size_limit: {e}") from None
        return value

    @property
    def home_size_bytes(self) -> int | None:
        """``home_size_limit`` in bytes; None for no limit."""
        return parse_size(self.home_size_limit) if self.home_size_limit else None

    temp_folders = List(
        Unicode(),
        help="""Folders every account may write into, cleared of a seat's files when it is wiped (system-users mode).

        What the seat's uid owns there goes, searched by descriptor without
        following links, entering only folders the uid could write into.
        Defaults to ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/dev/mqueue`` and,
        where it exists, ``/run/lock``. Add any other world-writable folder
        your machine has.
        """,
    ).tag(config=True)

    @default("temp_folders")
    def _default_temp_folders(self):
        # /run/lock is world-writable on Debian and Ubuntu, absent on some systems: listed only where it is.
        return [f for f in TEMP_FOLDERS if f != "/run/lock" or os.path.isdir(f)]

    cgroups = Bool(
        help="""Put each seat's server, and all it starts, in its own control group.

        The group enforces ``c.WodSpawner.mem_limit``, ``cpu_limit`` and
        ``pids_limit`` (or a workshop's own ``limits``), and CLEANUP, RESET
        and PURGE kill the seat through it, so nothing it forks escapes.
        Needs root and writable control groups (cgroup v1, or v2 with the
        controllers delegated); where they are missing the hub and the service
        log one warning naming what is not enforced, and go on. Defaults to
        ``system_users``: in single-user mode every seat runs as the hub's
        user, who can leave its group, and several hubs of one machine
        would share the group names of their seats.
        """,
    ).tag(config=True)

    @default("cgroups")
    def _cgroups_default(self):
        return self.system_users

    runtime = CaselessStrEnum(
        ["local", "docker", "swarm", "kubernetes"],
        "local",
        help="""Where seats' servers run, as the service sees it when it ends a seat (CLEANUP, RESET, PURGE).

        ``local``: processes of this machine, as ``student<N>`` in the seat's
        control group (``WodSpawner``, ``spawner_class = "wod"``). ``docker``:
        a container per seat, found by its labels (``spawner_class =
        "wod-docker"``, ``c.DockerRuntime``); ``swarm``: a Swarm service per
        seat (``"wod-swarm"``, ``c.SwarmRuntime``). ``kubernetes``: a pod per seat
        (``spawner_class = "wod-kubernetes"``, ``c.KubernetesRuntime``). The
        hub's spawner must match. See docs/scaling-out.md.
        """,
    ).tag(config=True)

    cgroup_root = Unicode(
        "/sys/fs/cgroup",
        help="Where the control groups are mounted: a cgroup v2 mount, or a folder of v1 controllers (``memory``, ``cpu``, ``pids``, ``freezer``).",
    ).tag(config=True)

    cgroup_parent = Unicode(
        "wod",
        help="""The group holding the seats' groups (``<cgroup_root>/<controller>/<cgroup_parent>/student<N>`` on v1).

        Give each backend of one machine its own, so that their seats never share a group.
        """,
    ).tag(config=True)

    @validate("cgroup_parent")
    def _relative_parent(self, proposal):
        value = proposal["value"].strip("/")
        if not value or ".." in value.split("/"):
            raise TraitError(f"cgroup_parent must be a relative group name such as 'wod', not {proposal['value']!r}")
        return value

    workshop_limits = Dict(
        help="""Per-workshop limits that win over the workshop's ``wod.yml`` ``limits:`` and the spawner's defaults.

        ``{"WKSHP-Spark101": {"memory": "4G", "cpu": 2, "processes": 1024}}``;
        ``memory`` takes a size (``512M``, ``2G``), ``cpu`` a number of cores,
        ``processes`` a count. For workshops whose ``wod.yml`` the admin does not own.
        """,
    ).tag(config=True)

    @validate("workshop_limits")
    def _valid_workshop_limits(self, proposal):
        for name, value in proposal["value"].items():
            _limits, problems = limits_from_meta(value)
            if problems:
                raise TraitError(f"workshop_limits[{name!r}]: " + " ".join(problems))
        return proposal["value"]

    kernel_python = Unicode(
        help="""The Python the students' kernels run, asked once which kernels it has and what they report.

        Each notebook of a workshop gets the ``kernelspec`` and
        ``language_info`` its kernel writes into it when JupyterLab opens
        it, so it opens unchanged rather than marked unsaved. Default: the
        interpreter of ``c.Spawner.cmd`` when that runs Python (the
        students' servers start their kernels with their own Python), else
        this process's. Empty: notebooks keep the metadata their authors
        gave them.
        """,
    ).tag(config=True)

    @default("kernel_python")
    def _kernel_python_default(self):
        for section in ("WodSpawner", "Spawner"):
            cmd = self.config[section].get("cmd") if section in self.config else None
            if isinstance(cmd, (list, tuple)) and cmd and os.path.basename(str(cmd[0])).startswith("python"):
                return str(cmd[0])
        return sys.executable

    readme_notebook = Unicode(
        README_NOTEBOOK,
        help="The notebook every workshop must have and that opens first.",
    ).tag(config=True)

    notebook_max_bytes = Integer(
        64 * 1024 * 1024,
        help="""Largest notebook the completion ratio reads; a larger one is reported on its entry and counts 0 of 0.

        Parsing costs many times a notebook's size in memory; a real
        workshop notebook is well under a MiB.
        """,
    ).tag(config=True)

    completion_max_bytes = Integer(
        256 * 1024 * 1024,
        help="Bytes of notebooks one completion ratio reads in all (one seat's workshop); the notebooks past it are reported, not read.",
    ).tag(config=True)

    completion_memory = Integer(
        1024 * 1024 * 1024,
        help="""Address space (bytes, ``RLIMIT_AS``) of the worker process that measures a completion ratio. 0: no limit.

        The service and the hub parse a student's notebooks in a short-lived
        worker, never in their own process: a notebook that needs more is
        reported on its entry, the others still count.
        """,
    ).tag(config=True)

    completion_timeout = Float(
        120,
        help="Seconds a completion ratio may take; past it the worker is killed and the ratio is reported as not measured (0 %).",
    ).tag(config=True)

    @validate("notebook_max_bytes", "completion_max_bytes", "completion_memory", "completion_timeout")
    def _bounds(self, proposal):
        if proposal["value"] < 0 or (proposal["value"] == 0 and proposal["trait"].name != "completion_memory"):
            raise TraitError(f"{proposal['trait'].name} must be more than 0, not {proposal['value']}")
        return proposal["value"]

    default_duration = Float(
        4,
        help="""Hours a seat lasts when neither its CREATE (``ends_at``) nor its workshop (``duration`` in wod.yml) says.

        A CREATE sets the seat's ``ends_at``; ``wod extend``, ``POST
        api/students/{N}/extend`` and the dashboard move it. 0: seats without
        a stated end have none (the service never cleans them up by itself).
        """,
    ).tag(config=True)

    expiry_grace = Float(
        900,
        help="""Seconds after a seat's ``ends_at`` before the service cleans it up itself.

        The portal sends CLEANUP at the end; this is the safety net behind it
        (a portal whose expiry run failed). The CLEANUP runs once, with the
        portal's callbacks as usual; the portal's own CLEANUP that comes later
        is answered with it, and nothing runs twice.
        """,
    ).tag(config=True)

    expiry_interval = Float(30, help="Seconds between two looks for seats past their end (and the grace).").tag(config=True)

    warn_at = List(
        [3600, 600],
        help="Seconds left at which a participant's session bar warns that the workshop ends (``api/seat``'s ``warn_at``).",
    ).tag(config=True)

    poll_seconds = Integer(
        10,
        help="""Seconds between two questions of a participant's session bar to its server (``api/seat``'s ``poll_seconds``).

        A smaller value shows announcements, progress and the end sooner, at
        one ``api/seat`` request per open JupyterLab each time (the bar takes
        1 to 600).
        """,
    ).tag(config=True)

    end_message = Unicode(
        "This workshop has ended. Thank you for taking part! Your notebooks have been removed with your seat.",
        help="What a participant's end screen says once their seat is cleaned up or past its end (``api/seat``'s ``end``).",
    ).tag(config=True)

    end_url = Unicode(
        "",
        help="A link the end screen offers (what to do next: a survey, the catalog of workshops); empty: none.",
    ).tag(config=True)

    progress_max_age = Float(
        5,
        help="""Seconds a participant's measured progress (``api/seat``) is reused before it is measured again on request.

        Measured off the service's event loop, in the completion workers;
        ``progress_concurrency`` measures run at once at most.
        """,
    ).tag(config=True)

    progress_concurrency = Integer(2, help="Progress measures (``api/seat``, the live class view) running at once at most.").tag(config=True)

    live_interval = Float(
        180,
        help="Seconds between two measures of the progress of every active seat for the dashboard's live class view.",
    ).tag(config=True)

    stalled_minutes = Float(
        15,
        help="Minutes without progress after which the live class view marks an active seat as stuck.",
    ).tag(config=True)

    @validate("default_duration", "expiry_grace")
    def _not_negative(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"{proposal['trait'].name} must be 0 or more, not {proposal['value']}")
        return proposal["value"]

    @validate("expiry_interval", "progress_max_age", "live_interval", "stalled_minutes", "progress_concurrency")
    def _positive(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"{proposal['trait'].name} must be more than 0, not {proposal['value']}")
        return proposal["value"]

    @validate("poll_seconds")
    def _poll_seconds(self, proposal):
        if not 1 <= proposal["value"] <= 600:
            raise TraitError(f"poll_seconds must be between 1 and 600, not {proposal['value']}")
        return proposal["value"]

    @validate("warn_at")
    def _warn_at(self, proposal):
        value = proposal["value"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise TraitError(f"warn_at must be a list of whole numbers of seconds above 0, not {value!r}")
        return sorted(value, reverse=True)

    def completion_limits(self) -> dict:
        """The keyword arguments of ``completion.measure`` these settings give."""
        return {
            "max_notebook_bytes": self.notebook_max_bytes,
            "max_total_bytes": self.completion_max_bytes,
            "memory_bytes": self.completion_memory,
            "timeout": self.completion_timeout,
        }

    def home(self, n: int) -> Path:
        """Seat ``n``'s home folder, under ``students_root``."""
        return Path(self.students_root) / f"student{n}"

    def in_range(self, n: int) -> bool:
        """Whether seat ``n`` is one of this hub's (``student_min`` .. ``student_max``)."""
        return self.student_min <= n <= self.student_max

    def seat(self, name: str):
        """The student number of login name ``name`` when it is one of this backend's seats, else None."""
        n = student_number(name)
        return n if n is not None and self.in_range(n) else None

    def check_student(self, n) -> int:
        """The one check of a student number a request names; ``n`` when it is one this backend serves.

        Not a whole number: 400 ``bad_student``. Outside ``student_min..student_max``
        (0 and negative numbers included): 422 ``student_out_of_range``.
        """
        check_student_number(n)
        if not self.in_range(n):
            raise Unprocessable(
                f"Student {n} is outside this backend's students {self.student_min}..{self.student_max}.",
                code="student_out_of_range",
            )
        return n
