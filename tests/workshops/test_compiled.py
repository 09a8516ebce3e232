"""``compile:`` workshops: scripts a participant runs but cannot read, played with real accounts and processes.

The root tests provision a seat of a workshop with a compiled shell script
and a compiled Python script, then act as the student (``sysusers.as_student``):
run them, try to read, copy, trace and inspect them. The checks without root
(what a broken script becomes: a problem naming it) run everywhere.
"""

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hubutil import write_workshop
from tests.sysusers import as_student, ensure_accounts, uid
from wod_jupyterhub.config import Wod
from wod_jupyterhub.errors import Unprocessable
from wod_jupyterhub.seats import accounts as etc_accounts
from wod_jupyterhub.seats import fdtrees as trees
from wod_jupyterhub.seats import homes, leftovers
from wod_jupyterhub.workshops import compiled
from wod_jupyterhub.workshops.catalog import load_catalog
from wod_jupyterhub.workshops.variables import template_variables

S, T = 236, 237  # students of tests/sysusers.py's range, this module's
#: the tests that run a seat's loaders as its student need root (real accounts, setuid children): marked so,
#: they are left out of ``make test-quick``, whose processes would share the accounts
ROOT = pytest.mark.root(reason="the compiled scripts' tests need root (real accounts, setuid children)")
WORKSHOP = "WKSHP-Hidden"
SECRET = "tok-9f3b2c7e-never-seen"
PY_SECRET = "py-4a81d0-never-seen"

LOGIN = f"""#!/bin/bash
# Logs into a private endpoint: its token must stay unseen.
TOKEN="{SECRET}"
echo "logged in as $(id -un) ($(id -u)) with ${{#TOKEN}} characters; args: $*"
readlink /proc/self/fd/3 >/dev/null 2>&1 && echo "fd 3 leaked" || echo "fd 3 closed"
echo "BASH_ENV=${{BASH_ENV:-unset}} FOO=${{FOO:-unset}}"
if [ "$1" = wait ]; then sleep 30; fi
"""

API = f"""#!/usr/bin/env python3
import os, sys
TOKEN = "{PY_SECRET}"
print("api says", len(TOKEN), sys.argv[1:], os.environ.get("PYTHONSTARTUP", "no startup"))
"""


def hidden_workshop(root: Path, scripts: dict, compile_value) -> Path:
    folder = write_workshop(root, WORKSHOP, (S, T), extra={"notes.txt": "plain file\n"})
    (folder / "tools").mkdir(exist_ok=True)
    for rel, text in scripts.items():
        (folder / rel).write_text(text)
        (folder / rel).chmod(0o700)  # readable by others, a source would be a blocking problem
    with open(folder / "wod.yml", "a") as f:
        f.write(f"compile: {json.dumps(compile_value)}\n")
    return folder


# -- without root: what a broken script becomes --------------------------------------------------


def test_a_script_that_cannot_be_compiled_is_a_problem_naming_it(tmp_path):
    root = tmp_path / "nb"
    hidden_workshop(
        root,
        {
            "login.sh": LOGIN, "broken.sh": "#!/bin/bash\nif then fi\n", "tools/bad.py": "#!/usr/bin/python3\ndef (:\n",
            "perl.pl": "#!/usr/bin/perl\nprint 1;\n",
        },
        "login.sh, broken.sh,tools/bad.py,perl.pl,missing.sh,../../etc/passwd",
    )
    ws = load_catalog([root]).get(WORKSHOP)
    assert ws.compile == ("login.sh",) and not ws.valid
    text = "\n".join(ws.blocking)
    assert f"{WORKSHOP}/broken.sh has a syntax error: line 2: syntax error near unexpected token" in text
    assert f"{WORKSHOP}/tools/bad.py has a syntax error line 2" in text
    assert f"{WORKSHOP}/perl.pl runs with perl" in text
    assert f"{WORKSHOP}/missing.sh is not a file of the workshop" in text
    assert "'../../etc/passwd' must be a path inside the workshop's folder" in text
    assert ws.to_json()["compile"] == ["login.sh"] and ws.to_json()["valid"] is False

    # wod check names it, and fails.
    config = tmp_path / "empty_config.py"
    config.write_text("")
    r = subprocess.run(
        [sys.executable, "-m", "wod_jupyterhub.cli", "check", WORKSHOP, "--notebooks", str(root), "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.returncode != 0, r.stdout + r.stderr
    assert "broken.sh has a syntax error" in r.stdout and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr

    # Mended: no problem any more, the catalog sees the change.
    (root / WORKSHOP / "wod.yml").write_text((root / WORKSHOP / "wod.yml").read_text().replace(
        "login.sh, broken.sh,tools/bad.py,perl.pl,missing.sh,../../etc/passwd", "login.sh"
    ))
    ws = load_catalog([root]).get(WORKSHOP)
    assert ws.valid and ws.compile == ("login.sh",), ws.problems
    r = subprocess.run(
        [sys.executable, "-m", "wod_jupyterhub.cli", "check", WORKSHOP, "--notebooks", str(root), "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr  # renders for a scratch seat, the programs left out


def test_compile_false_and_bad_values(tmp_path):
    root = tmp_path / "nb"
    for value, expect in ((False, ()), ("", ()), ("false", ()), (True, None), (3, None)):
        hidden_workshop(root, {"login.sh": LOGIN}, value)
        ws = load_catalog([root]).get(WORKSHOP)
        if expect is None:
            assert not ws.valid and "must name the scripts to compile" in ws.blocking[0]
        else:
            assert ws.valid and ws.compile == expect


def test_a_create_without_root_says_why(tmp_path):
    root = tmp_path / "nb"
    hidden_workshop(root, {"login.sh": LOGIN}, "login.sh")
    ws = load_catalog([root]).get(WORKSHOP)
    with pytest.raises(Unprocessable, match="needs the service to run as root with c.Wod.system_users"):
        compiled.check_can_install(ws, None)


# -- as root, with real accounts -----------------------------------------------------------------


@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the compiled scripts' tests need root (real accounts, setuid children); CI runs as root")
        pytest.skip("the compiled scripts' tests need root")
    ensure_accounts(S, T, tmp_path_factory.mktemp("users") / "students")


@pytest.fixture
def place():
    """A folder students can pass through (pytest's own is root's, 0700), removed afterwards."""
    top = Path("/tmp") / f"wod-cc-{os.getpid()}-{time.monotonic_ns()}"
    top.mkdir(mode=0o711)
    top.chmod(0o711)
    yield top
    trees.erase_tree(str(top))


@pytest.fixture
def homes_in(accounts):
    """Point students S and T's accounts (their ``pw_dir``) at homes under a folder, as the service's seats are; restored after."""
    before = {n: pwd.getpwuid(uid(n)).pw_dir for n in (S, T)}

    def rehome(n: int, home) -> None:
        # Rewritten in place (usermod refuses while a process of the account lives, as a test's may).
        etc_accounts.remove({f"student{n}"})
        etc_accounts.add([etc_accounts.Account(f"student{n}", uid(n), uid(n), str(home))])

    yield lambda students_root: [rehome(n, students_root / f"student{n}") for n in (S, T)]
    for n, home in before.items():
        rehome(n, home)


def seat_config(place: Path, **kwargs) -> Wod:
    kwargs.setdefault("compiled_dir", str(place / "compiled"))
    return Wod(students_root=str(place / "students"), uid_base=10000, system_users=True, student_min=200, student_max=249, **kwargs)


@pytest.fixture
def seat(accounts, place, homes_in):
    """Student S's home, provisioned (staged first, as a free seat is) from a workshop compiling two scripts."""
    root = place / "nb"
    hidden_workshop(root, {"login.sh": LOGIN, "tools/api.py": API}, "login.sh,tools/api.py")
    wod = seat_config(place)
    homes_in(place / "students")
    ws = load_catalog([root]).get(WORKSHOP)
    assert ws.valid, ws.problems
    homes.stage(wod, ws, S)
    home = homes.provision(wod, ws, S, template_variables(wod, ws, S, "Pw-1", modews="WKSHP"), uid=uid(S), gid=uid(S))
    return wod, ws, home


def _files_holding(folder: Path, text: str) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and text.encode() in Path(path).read_bytes():
                found.append(path)
    return found


@ROOT
def test_the_home_holds_loaders_and_no_source(seat, place):
    wod, ws, home = seat
    for rel in ("login.sh", "tools/api.py"):
        st = os.lstat(home / ws.name / rel)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o4711), rel
    assert (home / ws.name / "notes.txt").stat().st_uid == uid(S)  # the rest is the student's
    for secret in (SECRET, PY_SECRET):
        assert _files_holding(place / "students", secret) == []  # not in the home, not in a stage
        # ... only in the store, root's alone
        assert all(p.startswith(str(place / "compiled" / "scripts")) for p in _files_holding(place / "compiled", secret))
    assert oct(os.stat(place / "compiled" / "scripts").st_mode & 0o777) == "0o700"


@ROOT
def test_a_compiled_script_runs_as_the_student_and_prints_what_its_source_prints(seat, place):
    _wod, ws, home = seat
    # The source, run by the student the plain way, for comparison.
    source = place / "login-source.sh"
    source.write_text(LOGIN)
    source.chmod(0o755)
    run = "import subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); print(r.stdout, end=''); print(r.returncode)"
    plain = as_student(S, run, "/bin/bash", source, "a", "b c")
    ran = as_student(S, run, home / ws.name / "login.sh", "a", "b c")
    assert ran.stdout == plain.stdout.replace("fd 3 leaked", "fd 3 closed"), (ran.stdout, ran.stderr)
    assert f"logged in as student{S} ({uid(S)}) with {len(SECRET)} characters; args: a b c" in ran.stdout
    assert "fd 3 closed" in ran.stdout and ran.stdout.endswith("0\n")
    api = as_student(S, run, home / ws.name / "tools" / "api.py", "x")
    assert api.stdout == f"api says {len(PY_SECRET)} ['x'] no startup\n0\n", api.stdout + api.stderr


@ROOT
def test_the_caller_s_environment_does_not_reach_the_script(seat, place):
    """BASH_ENV (and any variable) of the caller is dropped: the student's code never runs inside the protected shell."""
    _wod, ws, home = seat
    evil = place / "evil.sh"
    evil.write_text('echo INJECTED; cat /dev/fd/3 /dev/fd/255 2>/dev/null\n')
    evil.chmod(0o755)
    code = (
        "import os, subprocess, sys; env = dict(os.environ, BASH_ENV=sys.argv[2], ENV=sys.argv[2], FOO='1', "
        "PYTHONSTARTUP=sys.argv[2], LD_PRELOAD='/nonexistent.so'); "
        "r = subprocess.run([sys.argv[1]], env=env, capture_output=True, text=True); print(r.stdout + r.stderr)"
    )
    out = as_student(S, code, home / ws.name / "login.sh", evil).stdout
    assert "INJECTED" not in out and SECRET not in out and "BASH_ENV=unset FOO=unset" in out, out
    out = as_student(S, code, home / ws.name / "tools" / "api.py", evil).stdout
    assert "INJECTED" not in out and PY_SECRET not in out and "no startup" in out, out


READ = """
import shutil, subprocess, sys
path = sys.argv[1]
out = []
for name, act in (
    ("open", lambda: open(path, "rb").read()),
    ("cat", lambda: subprocess.run(["cat", path], capture_output=True, check=True).stdout),
    ("cp", lambda: subprocess.run(["cp", path, "/tmp/copy-of-compiled"], capture_output=True, check=True).stdout),
):
    try:
        data = act()
        out.append(f"{name}:read {len(data)}")
    except (OSError, subprocess.CalledProcessError) as e:
        out.append(f"{name}:refused")
print(" ".join(out))
"""


@ROOT
def test_the_student_cannot_read_or_copy_it(seat):
    _wod, ws, home = seat
    for rel in ("login.sh", "tools/api.py"):
        assert as_student(S, READ, home / ws.name / rel).stdout.split() == ["open:refused", "cat:refused", "cp:refused"]
    assert not os.path.exists("/tmp/copy-of-compiled")


# Starts the script (it sleeps), then tries everything on the process holding its text: ptrace attach,
# /proc/<pid>/mem, environ, fd/; prints one word per attempt, and the process's cmdline.
INSPECT = r"""
import ctypes, os, shutil, subprocess, sys, time
proc = subprocess.Popen([sys.argv[1], "wait"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.0)
pid = proc.pid  # the loader execs the interpreter: same pid
out = {}
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
out["ptrace"] = "attached" if libc.ptrace(16, pid, None, None) == 0 else f"errno{ctypes.get_errno()}"
for tool, args in (("strace", ["strace", "-p", str(pid)]), ("gdb", ["gdb", "-q", "-batch", "-p", str(pid), "-ex", "dump memory /tmp/x 0 1"])):
    if shutil.which(tool):
        r = subprocess.run(args, capture_output=True, text=True, timeout=20)
        text = r.stdout + r.stderr
        out[tool] = "refused" if ("not permitted" in text or "ptrace" in text.lower()) and "Process %d attached" % pid not in text else text[:300]
for name in ("mem", "environ"):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            f.read(4096)
        out[name] = "read"
    except OSError as e:
        out[name] = type(e).__name__
try:
    out["fd"] = os.listdir(f"/proc/{pid}/fd")
except OSError as e:
    out["fd"] = type(e).__name__
out["cmdline"] = open(f"/proc/{pid}/cmdline", "rb").read().decode().replace("\0", " ")
children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
out["child_cmdlines"] = [open(f"/proc/{c}/cmdline", "rb").read().decode().replace("\0", " ") for c in children]
proc.kill()
print(repr(out))
"""


@ROOT
def test_the_student_cannot_trace_or_inspect_the_running_script(seat):
    import ast

    _wod, ws, home = seat
    r = as_student(S, INSPECT, home / ws.name / "login.sh", timeout=90)
    out = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert out["ptrace"] == "errno1"  # EPERM
    assert out.get("strace", "refused") == "refused" and out.get("gdb", "refused") == "refused", out
    assert out["mem"] == "PermissionError" and out["environ"] == "PermissionError" and out["fd"] == "PermissionError", out
    assert SECRET not in out["cmdline"] and out["cmdline"].endswith("/dev/fd/3 wait "), out
    assert out["child_cmdlines"] == ["sleep 30 "], out  # what the script runs sees no text of it either


TRACED = """
import shutil, subprocess, sys
if not shutil.which("strace"):
    print("no strace")
    sys.exit()
r = subprocess.run(["strace", "-f", "-s", "4096", "-o", "/dev/stdout", sys.argv[1]], capture_output=True, text=True, timeout=60)
print(r.returncode, r.stdout + r.stderr)
"""


@ROOT
def test_a_script_started_under_a_tracer_refuses_to_run(seat):
    """A tracer from the first instruction could steer the process: the loader then runs without root and refuses."""
    _wod, ws, home = seat
    out = as_student(S, TRACED, home / ws.name / "login.sh").stdout
    if out.strip() == "no strace":
        pytest.skip("strace is not installed (make test installs it)")
    assert SECRET not in out and "refuses to run traced" in out, out


@ROOT
def test_another_student_cannot_run_it_through_the_home(seat):
    _wod, ws, home = seat
    r = as_student(T, "import subprocess, sys; print(subprocess.run([sys.argv[1]]).returncode)", home / ws.name / "login.sh")
    assert "PermissionError" in r.stderr or r.returncode != 0


@ROOT
def test_it_is_compiled_once_per_script_version(seat, place):
    wod, ws, home = seat
    loaders = sorted(os.listdir(place / "compiled" / "bin"))
    assert len(loaders) == 2
    stamps = {n: os.stat(place / "compiled" / "bin" / n).st_mtime_ns for n in loaders}
    variables = template_variables(wod, ws, S, "Pw-2", modews="WKSHP")
    homes.provision(wod, ws, S, variables, uid=uid(S), gid=uid(S))
    assert {n: os.stat(place / "compiled" / "bin" / n).st_mtime_ns for n in loaders} == stamps  # copied, not compiled
    (Path(ws.path) / "login.sh").write_text(LOGIN.replace("logged in", "signed in"))
    ws = load_catalog([Path(ws.root)]).get(WORKSHOP)
    homes.provision(wod, ws, S, variables, uid=uid(S), gid=uid(S))
    assert len(os.listdir(place / "compiled" / "bin")) == 2  # the old version's loader and text are gone
    assert len(os.listdir(place / "compiled" / "scripts")) == 2
    run = "import subprocess, sys; print(subprocess.run([sys.argv[1]], capture_output=True, text=True).stdout)"
    assert "signed in as" in as_student(S, run, home / ws.name / "login.sh").stdout


# -- what a student attacking the protection tried -------------------------------------------------


def test_a_source_others_can_read_where_it_is_kept_is_a_blocking_problem(place):
    """``cat <notebooks root>/WKSHP-X/login.sh`` must not print what the seats' programs hide."""
    root = place / "nb"
    folder = hidden_workshop(root, {"login.sh": LOGIN}, "login.sh")
    for d in (root, folder):
        d.chmod(0o755)  # as share/workshops is
    (folder / "login.sh").chmod(0o644)
    ws = load_catalog([root]).get(WORKSHOP)
    assert not ws.valid and any(f"{WORKSHOP}/login.sh can be read by every user" in p for p in ws.blocking), ws.problems
    (folder / "login.sh").chmod(0o640)
    ws = load_catalog([root]).get(WORKSHOP)
    assert ws.valid, ws.problems
    (folder / "login.sh").chmod(0o644)
    folder.chmod(0o750)  # readable, but no one else may pass the folder
    assert load_catalog([root]).get(WORKSHOP).valid


def test_a_source_under_a_second_name_is_a_blocking_problem(tmp_path):
    root = tmp_path / "nb"
    folder = hidden_workshop(root, {"tools/real.sh": LOGIN, "api.sh": LOGIN.replace("logged", "api")}, "login.sh,api.sh")
    (folder / "login.sh").symlink_to("tools/real.sh")
    os.link(folder / "api.sh", folder / "api-copy.sh")
    ws = load_catalog([root]).get(WORKSHOP)
    text = "\n".join(ws.blocking)
    assert not ws.valid
    assert f"{WORKSHOP}/login.sh is also in the workshop as tools/real.sh" in text, text
    assert f"{WORKSHOP}/api.sh is also in the workshop as api-copy.sh" in text, text


@ROOT
def test_only_a_system_interpreter_runs_and_never_for_its_check_as_root(accounts, place):
    """``#!/tmp/atk/pub/bash``: the syntax check would run the student's file as root."""
    pub = place / "pub"
    pub.mkdir()
    pub.chmod(0o777)
    ran = place / "ran-as"
    fake = pub / "bash"
    fake.write_text(f"#!/bin/sh\nid -u > {ran}\ncat > /dev/null\n")
    fake.chmod(0o755)
    root = place / "nb"
    hidden_workshop(root, {"login.sh": f"#!{fake}\necho hi\n"}, "login.sh")
    ws = load_catalog([root]).get(WORKSHOP)
    assert not ws.valid and "interpreter must be a system one in /usr/bin or /bin" in ws.blocking[0], ws.problems
    assert not ran.exists()


def test_options_that_print_the_text_or_open_a_prompt_are_refused(tmp_path):
    root = tmp_path / "nb"
    for line in ("#!/bin/bash -x", "#!/bin/bash -v", "#!/bin/sh -ex", "#!/usr/bin/python3 -i", "#!/bin/bash -i"):
        hidden_workshop(root, {"login.sh": f"{line}\necho hi\n"}, "login.sh")
        ws = load_catalog([root]).get(WORKSHOP)
        assert not ws.valid and "#! line may only add the options" in ws.blocking[0], (line, ws.problems)
    hidden_workshop(root, {"login.sh": "#!/bin/bash -eu\necho hi\n"}, "login.sh")
    assert load_catalog([root]).get(WORKSHOP).valid


FUTURE = f'''#!/usr/bin/env python3
"""A docstring,
on two lines."""
from __future__ import annotations  # a comment
import sys
TOKEN: "str" = "{PY_SECRET}"
print("future says", len(TOKEN))
raise SystemExit(sys._getframe().f_lineno)
'''


def test_a_python_script_with_future_imports_compiles_and_keeps_its_line_numbers(tmp_path):
    root = tmp_path / "nb"
    hidden_workshop(root, {"api.py": FUTURE}, "api.py")
    ws = load_catalog([root]).get(WORKSHOP)
    assert ws.valid, ws.problems
    interp, _options, _real = compiled.parse_shebang(FUTURE.encode(), "api.py")
    text = compiled.with_prologue(interp, FUTURE.encode())
    assert text.count(b"\n") == FUTURE.count("\n")
    code = compile(text, "api.py", "exec", dont_inherit=True)
    assert "_wod_os" in code.co_names and text.split(b"\n")[3].startswith(b"from __future__ import annotations; import os")
    r = subprocess.run([sys.executable, "-I", "-c", text.decode().replace("_wod_os.close(3)", "None")], capture_output=True, text=True)
    assert r.stdout == f"future says {len(PY_SECRET)}\n" and r.returncode == 8, r


@ROOT
def test_a_loader_moved_out_of_the_home_runs_for_no_one_and_goes_with_the_seat(seat, place):
    """student S moves the loader (root's, 4711) to a temporary folder; S, T or anyone then running it gets nothing."""
    _wod, ws, home = seat
    tmp = place / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    r = as_student(S, "import os, sys; os.rename(sys.argv[1], sys.argv[2])", home / ws.name / "login.sh", tmp / "x")
    assert r.returncode == 0, r.stderr
    st = os.lstat(tmp / "x")
    assert st.st_uid == 0 and st.st_mode & 0o4000
    run = "import subprocess, sys; r = subprocess.run([sys.argv[1]], capture_output=True, text=True); print(r.returncode, r.stdout, r.stderr)"
    for n in (S, T):
        out = as_student(n, run, tmp / "x").stdout
        assert out.startswith("126") and "runs only from its participant's home" in out and "logged in" not in out, out
    nobody = subprocess.run([tmp / "x"], user="nobody", capture_output=True, text=True, cwd="/")
    assert nobody.returncode == 126 and "runs only for the workshop's participants" in nobody.stderr, nobody
    # Cleaning the seat removes it from the temporary folders.
    assert leftovers.remove_temp_files(uid(S), uid(S), [str(tmp)]) == 1
    assert not (tmp / "x").exists()


@ROOT
def test_an_old_loader_finds_its_script_gone(seat, place):
    wod, ws, home = seat
    old = (home / ws.name / "login.sh").read_bytes()
    (Path(ws.path) / "login.sh").write_text(LOGIN.replace("logged in", "signed in"))
    ws = load_catalog([Path(ws.root)]).get(WORKSHOP)
    home = homes.provision(wod, ws, S, template_variables(wod, ws, S, "Pw-2", modews="WKSHP"), uid=uid(S), gid=uid(S))
    kept = home / ws.name / "old.sh"
    kept.write_bytes(old)
    os.chown(kept, 0, 0)
    kept.chmod(0o4711)
    run = "import subprocess, sys; r = subprocess.run([sys.argv[1]], capture_output=True, text=True); print(r.returncode, r.stdout, r.stderr)"
    out = as_student(S, run, kept).stdout
    assert out.startswith("126") and "script is missing" in out and "logged in" not in out, out


@ROOT
def test_the_store_must_sit_below_folders_no_one_else_can_write(accounts, place, homes_in):
    root = place / "nb"
    hidden_workshop(root, {"login.sh": LOGIN}, "login.sh")
    ws = load_catalog([root]).get(WORKSHOP)
    shared = place / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a student's, say: they could swap compiled/ for a tree of their own
    wod = seat_config(place, compiled_dir=str(shared / "compiled"))
    homes_in(place / "students")
    with pytest.raises(Unprocessable, match="every folder above the compiled scripts must be root's"):
        homes.provision(wod, ws, S, template_variables(wod, ws, S, "Pw-1", modews="WKSHP"), uid=uid(S), gid=uid(S))


@ROOT
def test_the_loader_follows_no_link_to_its_script_or_interpreter(seat, place):
    """Even a link only root could make: the loader opens each folder itself, never through a link."""
    _wod, ws, home = seat
    os.rename(place / "compiled", place / "compiled-real")
    (place / "compiled").symlink_to("compiled-real")
    run = "import subprocess, sys; r = subprocess.run([sys.argv[1]], capture_output=True, text=True); print(r.returncode, r.stdout, r.stderr)"
    out = as_student(S, run, home / ws.name / "login.sh").stdout
    assert out.startswith("126") and "is missing" in out and "logged in" not in out, out
