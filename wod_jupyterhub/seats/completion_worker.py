"""The completion ratio measured in worker processes: bounded memory and time, never in the caller."""

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import BadRequest, NotFound
from .completion import MAX_NOTEBOOK_BYTES, MAX_TOTAL_BYTES, Budget, completion

#: Idle workers kept per (memory limit) in this process; more calls at once start more, which then exit.
KEEP_IDLE = 2
#: A worker answers this many requests, then a fresh one takes over (no slow growth of a long-lived heap).
REQUESTS_PER_WORKER = 500

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
# -I -S: no environment variables, no site-packages, no current folder on the path:
# only the standard library and this package, whatever the student put around.
_CODE = f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); from wod_jupyterhub.seats.completion_worker import serve; serve()"


class _Worker:
    def __init__(self, memory_bytes: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CODE, str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
            close_fds=True,
        )
        self.served = 0

    def ask(self, request: dict, timeout: float) -> dict:
        """One request, one answer line; raise TimeoutError or OSError/ValueError when the worker fails."""
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise OSError(self._why())
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
        self.served += 1
        return json.loads(b"".join(chunks))

    def _why(self) -> str:
        self.proc.kill()
        self.proc.wait()
        err = self.proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return err[-1][:300] if err else f"exit status {self.proc.returncode}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:  # stdin's unwritten request, to a worker that is gone
                pass


_idle: dict[int, list] = {}
_lock = threading.Lock()


def measure(path, *, notebooks=None, relative_to=None, max_notebook_bytes: int = MAX_NOTEBOOK_BYTES,
            max_total_bytes: int = MAX_TOTAL_BYTES, memory_bytes: int = 1024**3, timeout: float = 120) -> dict:
    """``completion.completion`` in a worker process limited to ``memory_bytes`` of address space and ``timeout`` seconds.

    Blocking (run it in a thread). Never raises for what the folder holds:
    a worker that fails, runs out of time or dies is reported as the
    result's ``error`` with a ratio of 0. A ``path`` that does not exist
    gives a result with no notebooks and that error.
    """
    request = {
        "path": os.fspath(path),
        "notebooks": list(notebooks) if notebooks is not None else None,
        "relative_to": os.fspath(relative_to) if relative_to is not None else None,
        "max_notebook_bytes": max_notebook_bytes,
        "max_total_bytes": max_total_bytes,
    }
    with _lock:
        pool = _idle.setdefault(memory_bytes, [])
        worker = pool.pop() if pool else None
    try:
        worker = worker or _Worker(memory_bytes)
        answer = worker.ask(request, timeout)
    except TimeoutError:
        worker.close()
        return failed(f"the completion was not measured: it took more than {timeout:g} s")
    except (OSError, ValueError) as e:
        if worker is not None:
            worker.close()
        return failed(f"the completion was not measured: the worker failed ({e})")
    result = answer["result"]
    if answer.get("retire") or worker.served >= REQUESTS_PER_WORKER:
        worker.close()
    else:
        with _lock:
            pool = _idle.setdefault(memory_bytes, [])
            keep = len(pool) < KEEP_IDLE
            if keep:
                pool.append(worker)
        if not keep:
            worker.close()
    return result


def failed(message: str) -> dict:
    """The result of a measure that could not be made: no ratio, and ``message`` saying why."""
    return {"ratio": 0, "executed": 0, "total": 0, "notebooks": [], "error": message}


def serve() -> None:
    """The worker: its memory limit first, then one JSON request per line on stdin, one answer line each."""
    import resource

    memory = int(sys.argv[1])
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    for line in sys.stdin.buffer:
        request = json.loads(line)
        path = request["path"]
        budget = Budget(int(request["max_notebook_bytes"]), int(request["max_total_bytes"]))
        try:
            result = completion(path, request["relative_to"], notebooks=request["notebooks"], budget=budget)
        except NotFound:
            result = failed(f"{path} does not exist")
        except BadRequest as e:
            result = failed(str(e))
        # A worker that met a MemoryError may keep a fragmented heap: answer, then let a fresh one take over.
        retire = any("memory" in (n.get("error") or "") for n in result["notebooks"])
        sys.stdout.write(json.dumps({"result": result, "retire": retire}) + "\n")
        sys.stdout.flush()
        if retire:
            return
