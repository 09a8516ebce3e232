# The checks of WKSHP-VerifiedSteps, rendered for each seat (its number is {{ STDID }}).
# Each check gets the seat (seat.home, seat.folder, seat.student) and returns None when the
# step is done, or a sentence saying what is missing. The solutions do the step.
# Every press of Check runs this file afresh: a module only one check needs is imported in it.
import os
import sys

STUDENT = {{ STDID }}
PORT = {{ 20000 + STDID }}
GREETING = "Hello from student{{ STDID }}"
LIMIT = 10 * STUDENT


def _read(seat, name, limit=4096):
    """A file of the workshop's folder, never through a link (one could lead to another seat's file)."""
    try:
        fd = os.open(os.path.join(seat.folder, name), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AssertionError(f"{name} cannot be read: {e.strerror}.") from None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def greeting_written(seat):
    text = _read(seat, "greeting.txt")
    if text is None:
        return "There is no greeting.txt in the workshop's folder yet."
    if text.strip() != GREETING:
        return f"greeting.txt says {text.strip()[:60]!r}, not {GREETING!r}."


def write_greeting(seat):
    with open(os.path.join(seat.folder, "greeting.txt"), "w") as f:
        f.write(GREETING + "\n")


def _listener_uid(port):
    """The uid owning the socket that listens on 127.0.0.1:port, or None."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return int(f[7])
    return None


def server_answers(seat):
    owner = _listener_uid(PORT)
    if owner is None:
        return f"Nothing listens on port {PORT} yet."
    if owner != os.getuid():
        return f"Port {PORT} is taken by a process that is not yours."
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=3) as r:
            body = r.read(65536).decode("utf-8", "replace")
    except Exception as e:
        return f"Your server on port {PORT} does not answer: {e}."
    if f"student{STUDENT}" not in body:
        return f"Your server answers, but its page does not name student{STUDENT}."


def start_server(seat):
    import subprocess

    www = os.path.join(seat.folder, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write(f"<h1>student{STUDENT}</h1>\n")
    # Its own session: the server outlives the solution.
    subprocess.Popen(
        [sys.executable, "-m", "http.server", str(PORT), "--bind", "127.0.0.1", "--directory", www],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    for _ in range(100):
        if _listener_uid(PORT) is not None:
            return
        __import__("time").sleep(0.05)


def answer_right(seat):
    text = _read(seat, "answer.txt")
    if text is None:
        return "There is no answer.txt in the workshop's folder yet."
    expected = sum(i * i for i in range(1, LIMIT + 1))
    try:
        given = int(text.strip())
    except ValueError:
        return "answer.txt must hold one whole number."
    if given != expected:
        return f"{given} is not the sum of the squares from 1 to {LIMIT}."


def write_answer(seat):
    with open(os.path.join(seat.folder, "answer.txt"), "w") as f:
        f.write(str(sum(i * i for i in range(1, LIMIT + 1))) + "\n")
