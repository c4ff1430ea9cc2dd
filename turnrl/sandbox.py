"""A sandbox for Python code written by a model: every execution runs in its own short-lived, locked-down process.

The code is treated as hostile. Each execution gets:

- its own process tree, forked from a long-lived launcher that has already imported ``numpy`` and ``sympy`` (so a
  typical computation pays no import cost), and killed as a whole at the end;
- Linux namespaces: a new **network** namespace (no interface is up, not even loopback: no network at all), a new
  **mount** namespace whose root is a fresh tmpfs holding read-only bind mounts of the system and the Python
  installation only (no project files, no home directory, no ``/etc`` beyond the dynamic-linker cache), a new
  **PID** namespace (the code sees only its own processes; when the execution ends, every process it started
  dies with the namespace), and new IPC and UTS namespaces;
- a fresh writable working directory ``/sandbox`` (tmpfs, size-capped) and ``/tmp``, gone when the execution ends;
- a separate unprivileged uid (unique per execution) with no capabilities and ``no_new_privs`` set;
- a fresh anonymous session keyring (``KEYCTL_JOIN_SESSION_KEYRING``), joined before the uid changes: a process
  possesses its session keyring, and with it every key there whatever its uid, so inheriting the caller's (after
  ``keyctl session``, or a service's private keyring) would hand the code its keys;
- a seccomp filter (classic BPF, loaded with ``prctl``): ``keyctl``, ``add_key`` and ``request_key`` fail (a uid's
  user keyring outlives the execution and uids are reused with pids), so do SysV ``shmget``/``msgget`` and
  ``memfd_create``/``memfd_secret`` (memory outside the address space), and, unless ``subprocesses`` is set,
  every way to start a process: ``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD`` (``PermissionError``;
  ``clone3``, whose flags a filter cannot read, answers ``ENOSYS``, on which glibc starts threads with
  ``clone``). Threads work. Other ABIs (i386, x32) are refused;
- resource limits (``setrlimit``): address space, CPU seconds, number of threads/processes (fork bombs), file
  size, open files, no core dumps; a wall-clock timeout enforced by the execution's own init process and again by
  the host;
- a minimal environment (no variable of the calling process is inherited) and no inherited file descriptors;
- output capped (the rest is drained and dropped, up to ``_MAX_DRAIN`` bytes: past that the host stops reading,
  and the code's writes block until the wall clock ends it); on failure, the error's last line
  ("ZeroDivisionError: division by zero"), as 003's executor returns it;
- nothing of an earlier execution: the launcher never reads a request's cells (they come in an anonymous file
  that only the forked execution reads), so no execution inherits another's code in the launcher's memory.

**Memory is capped per execution**, not per process: the code is one process (the filter refuses new ones), its
threads share one address space, so ``memory_mb`` (RLIMIT_AS) bounds the whole execution -- three children of
504 MiB under a 1,024 MiB cap cannot be started. Beyond the address space an execution holds at most its two
size-capped tmpfs directories (``disk_mb`` each) and small kernel buffers (pipes, sockets). Without the filter
(a kernel without seccomp, another architecture) RLIMIT_NPROC is set to 1 where the uid is the execution's own,
which refuses threads as well. ``subprocesses=True`` lets the code fork, up to ``max_processes`` processes and
threads at once (RLIMIT_NPROC), and gives each process ``memory_mb / max_processes`` of address space, so that
together they stay within ``memory_mb`` (where the uid is the execution's own; a share must exceed the
interpreter's own address space, about 110-150 MiB, so ``max_processes`` 4 needs ``memory_mb`` of about 1,024).
cgroups, which could bound a tree of processes as a whole, are not used: this machine's memory controller is on a cgroup
v1 hierarchy managed by its process manager, and under cgroup v2 a process may give its children a memory limit
only inside a subtree delegated to it whose own processes have been moved to leaves -- something the caller would
have to set up -- so the sandbox cannot rely on it; and a limit that differed between machines would make fork
work on one machine and fail on another, where an execution should be a function of its cells alone.

**The host does not trust what the execution writes.** An execution has three pipes: its output, its init's
report and its worker's report. Only the init holds the report pipe (the worker closes it before running the
code; the init is not dumpable, so its ``/proc/<pid>/fd`` does not reach it either), and the host waits for that pipe to
close -- the init is gone, and in a PID namespace every process of the execution with it -- not for a report
line; past the deadline it has the launcher kill the execution and waits for the pipe again. The worker's pipe
can be written by the code. The host keeps at most ``_MAX_STATUS`` bytes of each pipe (past that it closes the pipe:
a flood costs the host one read per 64 KiB up to the cap, nothing more), and takes from them only
one-line JSON records of the expected kind with typed fields (:func:`_parse_status`); a line that is too long,
not JSON (a line of 200,000 ``[``), of the wrong kind or type, a second record or an unterminated one makes that
execution a ``sandbox_error`` ("SandboxError: invalid status report ..."), nothing more. ``Sandbox.run`` and
``run_many`` never raise for a failed execution: every failure, the host's own included, is a result with an
error, one tool observation.

Where the machine does not allow a mechanism (no root and no unprivileged user namespaces, for instance), the
sandbox falls back to the strongest available set -- an unprivileged user namespace with the same namespaces and
filesystem view but no uid change, or, last, rlimits, a temporary working directory and a minimal environment --
and says so: every result names the mechanisms that applied (``ExecResult.isolation``) and the sandbox logs a
warning once. docs/tool-environment.md states what this protects against and what it does not.

State across calls is kept by **replay** (003's executor): a program is a list of cells -- every code block of the
conversation so far -- run in order in one fresh interpreter, and only the last cell's output is returned. Earlier
cells' output is discarded. A cell whose last statement is an expression prints its value, as a notebook does.
Executions are deterministic functions of the cells (fixed hash seed, fixed random seeds), which is what 003's
analysis assumes of the environment.

This module must import only the standard library: the launcher runs it as a script (``python sandbox.py``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

CELL_SEPARATOR = "\n# %% [cell]\n"
"""Separates cells in a program string (the percent cell format of Jupytext and editors)."""

FULL_ISOLATION = ("net", "mount", "pid", "ipc", "uts", "chroot", "uid", "no_new_privs", "rlimits", "keyring",
                  "seccomp", "single_process")

TIMEOUT_TEXT = "Timeout Error"
EMPTY_OUTPUT_TEXT = "Result is not defined"
"""003's executor answers an execution that printed nothing with this text."""

_MAX_REQUEST = 200_000  # bytes of one request (the cells and the config)
_MAX_STATUS = 65_536  # bytes the host keeps of one status pipe (a genuine report is well under 4 KiB)
_MAX_DRAIN = 32 * 1024 * 1024  # bytes of output the host reads (and counts) of one execution, at most
_MIN_ROOM_MB = 16  # MiB of address space a process must have beyond the interpreter's own, or nothing runs
_MAX_RECORD = 16_384  # bytes of one status record (one line)


@dataclass
class SandboxConfig:
    """Limits of one execution and how many run at once."""

    timeout: float = 5.0
    """Wall-clock seconds per execution (all cells of the program together)."""
    cpu_seconds: int = 10
    """CPU seconds per process (RLIMIT_CPU)."""
    memory_mb: int = 1024
    """Address space of the whole execution, MiB (RLIMIT_AS). The code is one process (see ``subprocesses``), its
    threads share the one address space; with ``subprocesses``, each process gets ``memory_mb / max_processes``."""
    max_processes: int = 16
    """Threads (and, with ``subprocesses``, processes) the code may have at once (RLIMIT_NPROC of its own uid)."""
    subprocesses: bool = False
    """Let the code start processes (``os.fork``, ``subprocess``, ``multiprocessing``). Off: the execution is one
    process and ``memory_mb`` bounds all of it. On: up to ``max_processes`` processes, each with ``memory_mb /
    max_processes`` of address space, so that ``memory_mb`` still bounds the whole (a share must exceed the
    interpreter's own 110-150 MiB: lower ``max_processes`` or raise ``memory_mb``)."""
    disk_mb: int = 64
    """Size of the writable working directory and of /tmp, and the largest file the code may write, MiB."""
    max_output_chars: int = 2000
    """Output beyond this many characters is dropped (the result says it was truncated)."""
    workers: int = 8
    """Executions run in parallel by :meth:`Sandbox.run_many`."""
    isolation: str = "auto"
    """auto (the strongest available), namespaces (needs root), userns (unprivileged user namespace) or none."""
    preload: list[str] = field(default_factory=lambda: ["numpy", "sympy", "math", "fractions", "itertools",
                                                        "collections", "decimal", "random"])
    """Modules the launcher imports once, so that executions do not pay for importing them."""


@dataclass
class ExecResult:
    """What one execution produced."""

    output: str
    """stdout and stderr of the last cell (interleaved as written), cut to ``max_output_chars``."""
    status: str
    """ok, error (a Python exception), timeout, cpu_limit, crashed (killed by a signal), exited (os._exit or a
    non-zero exit without a Python exception) or sandbox_error (the sandbox itself failed)."""
    error: str | None = None
    """The error's last line, e.g. "NameError: name 'x' is not defined" (None when status is ok)."""
    truncated: bool = False
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    max_rss_mb: float = 0.0
    isolation: list[str] = field(default_factory=list)
    """The mechanisms that applied (see ``FULL_ISOLATION``)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def observation(self) -> str:
        """The text returned to the model (003): the output; the error's last line on failure; "Timeout Error";
        "Result is not defined" when nothing was printed."""
        if self.status == "timeout":
            return TIMEOUT_TEXT
        if self.status != "ok":
            return self.error or self.status
        return self.output.strip() or EMPTY_OUTPUT_TEXT


def join_cells(cells: list[str]) -> str:
    """One program string from cells (the inverse of :func:`split_cells`)."""
    return CELL_SEPARATOR.join(cells)


def split_cells(program: str) -> list[str]:
    return program.split(CELL_SEPARATOR)


# --------------------------------------------------------------------------------------------------------------
# Host side


class Sandbox:
    """Runs programs in isolated processes; thread-safe; start-up is lazy (the first call starts the launcher).

    >>> with Sandbox(SandboxConfig(timeout=2)) as box:
    ...     box.run(["x = 6 * 7", "x"]).output
    '42\\n'
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        if self.config.isolation not in ("auto", "namespaces", "userns", "none"):
            raise ValueError(f"isolation must be auto, namespaces, userns or none, got {self.config.isolation!r}")
        if self.config.max_processes < 1 or self.config.memory_mb < 1:
            raise ValueError("max_processes and memory_mb must be at least 1")
        self._lock = threading.Lock()
        self._launcher: _Launcher | None = None
        self._counter = 0
        self._warned = False
        self.isolation: list[str] = []
        """The mechanisms the most recent execution got."""

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._launcher is not None:
                self._launcher.close()
                self._launcher = None

    def run(self, program: str | list[str]) -> ExecResult:
        """Run the cells of ``program`` (a list, or a string split at ``CELL_SEPARATOR``) in a fresh sandbox;
        return the last cell's result. Never raises for a failed execution: whatever goes wrong (the code, its
        status report, the sandbox) is that call's result, with ``status`` and ``error`` saying what."""
        try:
            return self._run(program)
        except Exception as exc:  # noqa: BLE001 -- one bad execution must not abort a rollout
            log.warning("sandbox: an execution failed in the host: %r", exc)
            return ExecResult(output="", status="sandbox_error",
                              error=f"SandboxError: {type(exc).__name__}: {exc}"[:500])

    def _run(self, program: str | list[str]) -> ExecResult:
        cells = split_cells(program) if isinstance(program, str) else list(program)
        request = {"cells": cells, "config": asdict(self.config)}
        data = json.dumps(request).encode()
        if len(data) > _MAX_REQUEST:
            return ExecResult(output="", status="error", error=f"ProgramTooLong: {len(data)} bytes")
        for attempt in range(2):
            launcher = None
            try:
                launcher, rid = self._acquire()
                result = launcher.execute(rid, data, self.config)
                break
            except _LauncherGone:
                self._discard(launcher)
                if attempt == 1:
                    return ExecResult(output="", status="sandbox_error", error="the sandbox launcher failed")
        self.isolation = result.isolation
        if not self._warned and result.isolation and not set(FULL_ISOLATION) <= set(result.isolation):
            self._warned = True
            missing = sorted(set(FULL_ISOLATION) - set(result.isolation))
            log.warning("sandbox: running with reduced isolation; missing: %s (applied: %s)",
                        ", ".join(missing), ", ".join(result.isolation))
        return result

    def run_many(self, programs: list[str | list[str]]) -> list[ExecResult]:
        """Run several programs at once (``workers`` in parallel); results in order."""
        if not programs:
            return []
        if len(programs) == 1:
            return [self.run(programs[0])]
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.workers, len(programs)))) as pool:
            return list(pool.map(self.run, programs))  # run returns a result for every program, never raises

    def _acquire(self) -> tuple["_Launcher", int]:
        with self._lock:
            if self._launcher is None or not self._launcher.alive():
                if self._launcher is not None:
                    self._launcher.close()
                self._launcher = _Launcher(self.config)
            self._counter += 1
            return self._launcher, self._counter

    def _discard(self, launcher: "_Launcher | None") -> None:
        with self._lock:
            if launcher is not None and self._launcher is launcher:
                launcher.close()
                self._launcher = None


class _LauncherGone(Exception):
    pass


def _sandbox_environment() -> dict[str, str]:
    """The whole environment the launcher (and so every execution) gets: nothing of the caller's."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/sandbox", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


class _Launcher:
    """The host's handle on the launcher process: sends requests with their pipes, reads results."""

    def __init__(self, config: SandboxConfig):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = ["-s", "-P"] if sys.version_info >= (3, 11) else ["-s"]
        self.proc = subprocess.Popen(
            [sys.executable, *flags, os.path.abspath(__file__), "--launcher", str(theirs.fileno()),
             json.dumps(config.preload)],
            pass_fds=[theirs.fileno()], env=_sandbox_environment(), cwd="/", stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.sock = ours
        self._send_lock = threading.Lock()
        self.sock.settimeout(120)
        try:
            ready = self.sock.recv(4096)  # the launcher answers once its modules are imported
        except OSError:
            ready = b""
        finally:
            self.sock.settimeout(None)
        if not ready:
            _stop_launcher(self.proc, self.sock)
            raise _LauncherGone("the sandbox launcher failed to start")
        self._finalizer = weakref.finalize(self, _stop_launcher, self.proc, self.sock)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        else:
            _stop_launcher(self.proc, self.sock)

    def _send(self, data: bytes, fds: list[int]) -> None:
        try:
            with self._send_lock:
                socket.send_fds(self.sock, [data], fds)
        except OSError as exc:
            raise _LauncherGone() from exc

    def execute(self, rid: int, data: bytes, config: SandboxConfig) -> ExecResult:
        """Send one execution with three pipes -- its output, its init's report, its worker's report -- and the
        request in a file (:func:`_request_file`), and read the pipes until the init is gone.

        Only the init holds the report pipe (the worker closes it before running the code), so the code cannot
        write there, and its end-of-file says that the execution's processes are gone: the host waits for that,
        not for a report line, which the code could forge. The worker's report pipe is the code's own to write:
        the host keeps at most ``_MAX_STATUS`` bytes of either and reads nothing in it but well-formed records
        (:func:`_parse_status`)."""
        start = time.monotonic()
        request = _request_file(data)
        pipes = [os.pipe() for _ in range(3)]
        (out_r, out_w), (st_r, st_w), (wk_r, wk_w) = pipes
        try:
            self._send(json.dumps({"op": "run", "id": rid}).encode(), [out_w, st_w, wk_w, request])
        except _LauncherGone:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            raise
        finally:
            os.close(request)
        for fd in (out_w, st_w, wk_w):
            os.close(fd)
        # The execution's own init enforces the timeout; the host waits longer, for start-up on a busy machine.
        deadline = start + config.timeout + 10.0
        caps = {out_r: config.max_output_chars * 4,  # bytes: enough for max_output_chars characters of UTF-8
                st_r: _MAX_STATUS, wk_r: _MAX_STATUS}
        # A flood costs the host no more than this much reading per call: past it, a pipe is no longer read.
        drains = {out_r: _MAX_DRAIN, st_r: _MAX_STATUS, wk_r: _MAX_STATUS}
        kept = {fd: bytearray() for fd in caps}
        totals = dict.fromkeys(caps, 0)
        open_fds = set(caps)
        closed: set[int] = set()
        poller = select.poll()  # not select(): a busy host may hold descriptors past FD_SETSIZE
        for fd in caps:
            poller.register(fd, select.POLLIN)
        init_gone_at = None
        killed = False
        try:
            while open_fds:
                now = time.monotonic()
                if st_r not in open_fds:  # the init has exited: in a PID namespace, everything went with it
                    init_gone_at = now if init_gone_at is None else init_gone_at
                    if now - init_gone_at > 1.0:
                        break  # stray writers (degraded isolation only) are not waited for
                if now > deadline:
                    if killed:
                        break  # the kill did not close the init's pipe within the grace: give up on it
                    self._kill(rid)
                    killed = True
                    deadline = now + 5.0  # grace for the kill to take the execution down
                    continue
                wait = min(0.5, deadline - now)
                if init_gone_at is not None:
                    wait = min(wait, 1.0 - (now - init_gone_at))
                for fd, _ in poller.poll(max(0, int(wait * 1000) + 1)):
                    chunk = os.read(fd, 65536)
                    if not chunk:  # end of file (POLLHUP with nothing left to read)
                        open_fds.discard(fd)
                        poller.unregister(fd)
                        continue
                    totals[fd] += len(chunk)
                    room = caps[fd] - len(kept[fd])
                    if room > 0:
                        kept[fd] += chunk[:room]
                    if totals[fd] > drains[fd]:  # a flood: stop reading this pipe
                        open_fds.discard(fd)
                        poller.unregister(fd)
                        if fd != out_r:
                            # A status pipe past its cap is a void report already: closing it makes the code's
                            # writes fail at once. The output stays open: its writes block until the clock ends it.
                            os.close(fd)
                            closed.add(fd)
        finally:
            for fd in set(caps) - closed:
                os.close(fd)
        init = _parse_status(bytes(kept[st_r]), totals[st_r] > len(kept[st_r]), "init")
        worker = _parse_status(bytes(kept[wk_r]), totals[wk_r] > len(kept[wk_r]), "worker")
        if init[0] is None and not self.alive():
            raise _LauncherGone()  # the execution died with the launcher: run it again on a new one
        return _make_result(kept[out_r], totals[out_r], init, worker, killed, config, time.monotonic() - start,
                            drained=totals[out_r] <= _MAX_DRAIN)

    def _kill(self, rid: int) -> None:
        try:
            self._send(json.dumps({"op": "kill", "id": rid}).encode() + b"\n", [])
        except _LauncherGone:
            pass


def _request_file(data: bytes) -> int:
    """A descriptor of an anonymous file holding ``data`` (the request), at offset 0.

    The launcher passes it on unread: only the forked execution reads it, so the launcher never holds a
    request's cells in its own memory, which every later execution inherits (freed memory keeps its bytes)."""
    try:
        fd = os.memfd_create("turnrl-sandbox-request", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd: an unlinked temporary file
        import tempfile

        with tempfile.TemporaryFile() as fh:
            fd = os.dup(fh.fileno())
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _stop_launcher(proc: subprocess.Popen, sock: socket.socket) -> None:
    try:
        sock.close()  # the launcher exits on end-of-file and kills what still runs
    finally:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _is_text(value, limit: int = 4000) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _is_amount(value) -> bool:
    import math

    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= 1e12)


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


_RECORD_FIELDS = {
    "init": {"isolation": lambda v: isinstance(v, list) and len(v) <= 32 and all(_is_text(x, 32) for x in v),
             "timeout": lambda v: isinstance(v, bool),
             "problems": lambda v: isinstance(v, list) and len(v) <= 16 and all(_is_text(x) for x in v),
             "signal": lambda v: _is_int(v, 1, 128), "exit_code": lambda v: _is_int(v, 0, 255),
             "cpu_seconds": _is_amount, "max_rss_mb": _is_amount, "setup_error": _is_text},
    "worker": {"error": lambda v: v is None or _is_text(v), "done": lambda v: v is True, "setup_error": _is_text},
}
"""The fields each kind of status record may have, with their types (anything else makes the record invalid)."""


def _valid_record(kind: str, record: dict) -> bool:
    fields = _RECORD_FIELDS[kind]
    if not all(key in fields and fields[key](value) for key, value in record.items()):
        return False
    if "setup_error" in record:
        return True
    if kind == "init":  # a report of how the worker ended: the isolation, the timeout flag, one way of ending
        return "isolation" in record and "timeout" in record and ("signal" in record) != ("exit_code" in record)
    return "done" in record and "error" in record


def _parse_status(data: bytes, overflowed: bool, kind: str) -> tuple[dict | None, list[str]]:
    """The first valid record of ``kind`` in one status pipe's bytes, and the pipe's faults.

    A record is one line, a JSON object ``{kind: {field: value}}`` with the fields and types of
    ``_RECORD_FIELDS``. Anything else is a fault -- a line that is too long, not JSON (nested too deeply, for
    one), of another kind, with an unknown field or a field of the wrong type, a second record, a last line
    without its newline, more bytes than the host keeps -- and :func:`_make_result` makes a faulty pipe a failed
    execution. Never raises."""
    faults: list[str] = []
    if overflowed:
        faults.append(f"over {_MAX_STATUS} bytes")
    lines = data.split(b"\n")
    if lines[-1]:
        faults.append("an unterminated record")
    record = None
    for line in lines[:-1]:
        if len(line) > _MAX_RECORD:
            faults.append("a record too long")
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            faults.append("a record that is not JSON")
            continue
        value = obj.get(kind) if isinstance(obj, dict) and len(obj) == 1 else None
        if not isinstance(value, dict) or not _valid_record(kind, value):
            faults.append("an invalid record")
        elif record is not None:
            faults.append("a second record")  # the first one stands; the report is faulty all the same
        else:
            record = value
    return record, list(dict.fromkeys(faults))


def _make_result(head: bytearray, total: int, init_report: tuple[dict | None, list[str]],
                 worker_report: tuple[dict | None, list[str]], killed: bool, config: SandboxConfig,
                 wall: float, drained: bool = True) -> ExecResult:
    """The result from the output and the two parsed status pipes (records already validated by type).
    ``drained``: the host read all the output (False: it stopped at ``_MAX_DRAIN`` bytes)."""
    init, init_faults = init_report
    worker, worker_faults = worker_report
    init, worker = init or {}, worker or {}
    text = head.decode("utf-8", "replace")
    truncated = total > len(head) or len(text) > config.max_output_chars
    if truncated:
        text = text[: config.max_output_chars] + (f"\n[output truncated: {total} bytes in all]" if drained
                                                  else f"\n[output truncated: over {_MAX_DRAIN} bytes]")
    result = ExecResult(output=text, status="ok", truncated=truncated, wall_seconds=round(wall, 4),
                        cpu_seconds=float(init.get("cpu_seconds", 0.0)),
                        max_rss_mb=float(init.get("max_rss_mb", 0.0)),
                        isolation=list(init.get("isolation", [])))
    if killed or init.get("timeout"):
        result.status, result.error = "timeout", TIMEOUT_TEXT
    elif init_faults:
        result.status = "sandbox_error"
        result.error = f"SandboxError: invalid status report from the sandbox ({', '.join(init_faults)})"
    elif not init or init.get("setup_error"):
        result.status, result.error = "sandbox_error", str(init.get("setup_error") or "the sandbox failed")
    elif worker_faults:
        # The code wrote to its worker's status pipe: its own result is void, nothing else is affected.
        result.status = "sandbox_error"
        result.error = f"SandboxError: invalid status report from the execution ({', '.join(worker_faults)})"
    elif worker.get("setup_error"):
        result.status, result.error = "sandbox_error", str(worker["setup_error"])
    elif init.get("signal"):
        sig = init["signal"]
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and init.get("cpu_seconds", 0) >= config.cpu_seconds):
            result.status, result.error = "cpu_limit", "CPU time limit exceeded"
        else:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            result.status, result.error = "crashed", f"Process killed by signal {name}"
    elif worker.get("error"):
        result.status, result.error = "error", str(worker["error"])
    elif init.get("exit_code", 0) != 0 or not worker.get("done"):
        result.status, result.error = "exited", f"Process exited with code {init.get('exit_code', 0)}"
    return result


# --------------------------------------------------------------------------------------------------------------
# Launcher side (runs as its own process; standard library only)

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME = 1024, 2048, 1 << 21
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
_UID_BASE = 1_000_000_000  # sandbox uids: base + the launcher child's pid, so concurrent executions never share

# keyctl(2) operations and special keyring ids
_KEYCTL_GET_KEYRING_ID, _KEYCTL_JOIN_SESSION_KEYRING, _KEYCTL_CLEAR = 0, 1, 7
_KEY_SPEC_SESSION_KEYRING, _KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING = -3, -4, -5
_EPERM, _ENOSYS = 1, 38
_CLONE_THREAD = 0x00010000
# seccomp: classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_SECCOMP_MODE_FILTER, _SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 2, 0x7FFF0000, 0x00050000
_X32_SYSCALL_BIT = 0x40000000
_ARCH = {  # uname machine: (AUDIT_ARCH_*, syscall numbers); little-endian only (the filter reads args[0]'s low half)
    "x86_64": (0xC000003E, {"keyctl": 250, "add_key": 248, "request_key": 249, "clone": 56, "fork": 57,
                            "vfork": 58, "clone3": 435, "shmget": 29, "msgget": 68, "memfd_create": 319,
                            "memfd_secret": 447}),
    "aarch64": (0xC00000B7, {"keyctl": 219, "add_key": 217, "request_key": 218, "clone": 220, "clone3": 435,
                             "shmget": 194, "msgget": 186, "memfd_create": 279, "memfd_secret": 447}),
}


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _keyctl(libc, *args: int) -> int:
    """keyctl(2) through syscall(2) (glibc has no wrapper); -errno on failure."""
    import ctypes

    nr = _ARCH.get(os.uname().machine, (0, {}))[1].get("keyctl")
    if nr is None:
        return -_ENOSYS
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return rc if rc >= 0 else -ctypes.get_errno()


def _join_session_keyring(libc) -> None:
    """Leave the caller's session keyring for a fresh anonymous one (KEYCTL_JOIN_SESSION_KEYRING, NULL): a
    process possesses its session keyring, and with it every key there, whatever its uid."""
    rc = _keyctl(libc, _KEYCTL_JOIN_SESSION_KEYRING, 0)
    if rc < 0 and rc != -_ENOSYS:  # ENOSYS: a kernel without keyrings has none to inherit
        raise OSError(-rc, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(-rc)}")


def _seccomp_program(allow_processes: bool) -> list[tuple[int, int, int, int]]:
    """The worker's seccomp filter, as (code, jt, jf, k) instructions: deny the kernel keyring calls (keyctl,
    add_key, request_key: a uid's user keyring outlives the execution), SysV shared memory and message queues and
    memfd_create/memfd_secret (memory outside the address space that RLIMIT_AS bounds), and -- unless
    ``allow_processes`` -- every way to start a process (fork, vfork, clone without CLONE_THREAD; clone3, whose
    flags a filter cannot read, answers ENOSYS, on which glibc starts threads with clone). Threads stay allowed:
    they share the address space. Any other ABI (i386, x32) is refused outright."""
    audit_arch, nr = _ARCH[os.uname().machine]
    prog: list[list] = [[_BPF_LD_W_ABS, 0, 0, 4], [_BPF_JEQ_K, 0, "eperm", audit_arch], [_BPF_LD_W_ABS, 0, 0, 0]]
    if os.uname().machine == "x86_64":
        prog.append([_BPF_JGE_K, "eperm", 0, _X32_SYSCALL_BIT])
    denied = ["keyctl", "add_key", "request_key", "shmget", "msgget", "memfd_create", "memfd_secret"]
    if not allow_processes:
        denied += [name for name in ("fork", "vfork") if name in nr]
    prog += [[_BPF_JEQ_K, "eperm", 0, nr[name]] for name in denied]
    if not allow_processes:
        prog += [[_BPF_JEQ_K, "enosys", 0, nr["clone3"]],
                 [_BPF_JEQ_K, 0, "allow", nr["clone"]],
                 [_BPF_LD_W_ABS, 0, 0, 16],  # clone's flags: the low half of args[0]
                 [_BPF_JSET_K, "allow", "eperm", _CLONE_THREAD]]
    labels = {"allow": len(prog), "eperm": len(prog) + 1, "enosys": len(prog) + 2}
    prog += [[_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW], [_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | _EPERM],
             [_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | _ENOSYS]]
    for i, insn in enumerate(prog):
        for j in (1, 2):
            if isinstance(insn[j], str):
                insn[j] = labels[insn[j]] - (i + 1)  # jumps are relative to the next instruction
    return [tuple(insn) for insn in prog]


def _install_seccomp(libc, allow_processes: bool) -> None:
    """Load :func:`_seccomp_program` into this (single-threaded) process; no_new_privs must already be set."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    insns = _seccomp_program(allow_processes)
    table = (SockFilter * len(insns))(*[SockFilter(*insn) for insn in insns])
    fprog = SockFprog(len(insns), table)
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


def _probe_features() -> dict[str, bool]:
    """What this kernel gives the worker, tried once in a throwaway child: a fresh session keyring ("keyring"),
    and a seccomp filter that then really refuses keyctl and fork ("seccomp")."""
    if os.uname().machine not in _ARCH:
        return {"keyring": False, "seccomp": False}
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            libc = _libc()
            try:
                _join_session_keyring(libc)
                code |= 1
            except OSError:
                pass
            _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
            _install_seccomp(libc, allow_processes=False)
            if _keyctl(libc, _KEYCTL_GET_KEYRING_ID, _KEY_SPEC_SESSION_KEYRING, 0) == -_EPERM:
                try:
                    child = os.fork()
                except PermissionError:
                    code |= 2
                else:
                    if child == 0:
                        os._exit(0)
                    os.waitpid(child, 0)
        except BaseException:  # noqa: BLE001 -- whatever failed is not available
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    bits = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
    return {"keyring": bool(bits & 1), "seccomp": bool(bits & 2)}


def _launcher_main(sock_fd: int, preload: list[str]) -> None:
    """Import the preloaded modules, then fork one execution per request until the host closes the socket."""
    import importlib

    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != os.path.dirname(os.path.abspath(__file__))]
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional module only costs executions that import it
            pass
    for name in ("ast", "ctypes", "random", "resource", "shutil", "tempfile", "traceback", "numpy.random"):
        try:  # what the runner itself uses, so that no execution imports it after confinement
            importlib.import_module(name)
        except ImportError:
            pass

    sock = socket.socket(fileno=sock_fd)
    mount_point = _make_mount_point()
    features = _probe_features()
    sock.send(json.dumps({"ready": True}).encode())
    children: dict[int, int] = {}  # request id -> pid
    sock.settimeout(0.5)
    try:
        while True:
            _reap(children)
            try:
                msg, fds, _, _ = socket.recv_fds(sock, 4096, 4)  # a header; a run's cells come in a file
            except socket.timeout:
                continue
            except OSError:
                break
            if not msg:
                break
            req = json.loads(msg)
            if req["op"] == "run" and len(fds) != 4:  # output, the init's report, the worker's report, the request
                for fd in fds:
                    os.close(fd)
                continue
            if req["op"] == "kill":
                pid = children.get(req["id"])
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)  # not yet reaped, so the pid cannot have been reused
                    except ProcessLookupError:
                        pass
                continue
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    sock.close()
                    _execution(_read_request(fds[3]), fds[0], fds[1], fds[2], mount_point, features)
                    code = 0
                finally:
                    os._exit(code)
            for fd in fds:
                os.close(fd)
            children[req["id"]] = pid
    finally:
        for pid in children.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(children)
        try:
            os.rmdir(mount_point)
        except OSError:
            pass


def _read_request(fd: int) -> dict:
    """The request in the file the host sent (read in the execution's own process, after the fork)."""
    data = b""
    while len(data) <= _MAX_REQUEST:
        chunk = os.pread(fd, _MAX_REQUEST + 1 - len(data), len(data))
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return json.loads(data)


def _make_mount_point() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="turnrl-sandbox-root-", dir="/tmp" if os.path.isdir("/tmp") else None)


def _reap(children: dict[int, int]) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for rid, p in list(children.items()):
            if p == pid:
                del children[rid]


def _write_status(fd: int, obj: dict) -> None:
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _execution(request: dict, out_fd: int, status_fd: int, worker_fd: int, mount_point: str,
               features: dict[str, bool]) -> None:
    """One execution, in a child of the launcher: enter new namespaces, then fork the init of the sandbox.
    ``status_fd`` carries the init's report (only the init keeps it), ``worker_fd`` the worker's."""
    cfg = request["config"]
    libc = _libc()
    host_pid = os.getpid()
    sandbox_uid = _UID_BASE + host_pid
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    mode, problems = "none", []
    if cfg["isolation"] in ("auto", "namespaces"):
        try:
            _check(libc.unshare(flags), "unshare")
            mode = "namespaces"
        except OSError as exc:
            problems.append(str(exc))
    if mode == "none" and cfg["isolation"] in ("auto", "userns"):
        try:
            _enter_user_namespace(libc, flags)
            mode = "userns"
        except OSError as exc:
            problems.append(str(exc))
    if mode == "none" and cfg["isolation"] != "auto" and cfg["isolation"] != "none":
        _write_status(status_fd, {"init": {"setup_error": f"isolation {cfg['isolation']!r} is unavailable: "
                                                          + "; ".join(problems)}})
        return
    nproc_base = 0 if mode == "namespaces" or os.geteuid() == 0 else _count_processes(os.getuid())
    pid = os.fork()
    if pid == 0:
        _init(request["cells"], cfg, mode, problems, out_fd, status_fd, worker_fd, mount_point, libc, sandbox_uid,
              nproc_base, features)
        return
    for fd in (out_fd, status_fd, worker_fd):
        os.close(fd)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return


def _enter_user_namespace(libc, flags: int) -> None:
    uid, gid = os.geteuid(), os.getegid()
    _check(libc.unshare(_CLONE_NEWUSER | flags), "unshare(user)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
        except FileNotFoundError:
            if name != "setgroups":
                raise


def _count_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _init(cells, cfg, mode, problems, out_fd, status_fd, worker_fd, mount_point, libc, sandbox_uid, nproc_base,
          features) -> None:
    """PID 1 of the sandbox: build its filesystem, fork the worker, enforce the wall clock, report, exit (which
    kills every process left in the PID namespace)."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Not dumpable: where the worker keeps this process's uid (user namespace, no namespaces), it still cannot
    # open /proc/1/fd/* -- the report pipe -- or ptrace this process.
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    isolation: list[str] = []
    root = workdir = None
    setup_error = None
    try:
        if mode in ("namespaces", "userns"):
            isolation += ["net", "mount", "pid", "ipc", "uts"] + (["user"] if mode == "userns" else [])
            libc.sethostname(b"sandbox", 7)
            uid = sandbox_uid if mode == "namespaces" else 0
            root = _build_root(libc, mount_point, cfg, uid, mode)
            workdir = "/sandbox"
            isolation.append("chroot")
        else:
            import tempfile

            workdir = tempfile.mkdtemp(prefix="turnrl-sandbox-work-")
            if os.geteuid() == 0:
                os.chown(workdir, sandbox_uid, sandbox_uid)
    except OSError as exc:
        setup_error = f"sandbox setup failed: {exc}"
    if setup_error is not None:
        _write_status(status_fd, {"init": {"setup_error": setup_error, "isolation": isolation}})
        os._exit(0)
    # Without a private filesystem view, a dropped uid must still be able to read the Python installation.
    drop_uid = mode == "namespaces" or (mode == "none" and os.geteuid() == 0 and _readable_by_others(
        [sys.base_prefix, sys.prefix]))
    if drop_uid:
        isolation.append("uid")
    isolation += ["no_new_privs", "rlimits"]
    if features["keyring"]:
        isolation.append("keyring")
    if features["seccomp"]:
        isolation.append("seccomp")
    if not cfg["subprocesses"] and (features["seccomp"] or drop_uid):
        isolation.append("single_process")  # by the filter, or by RLIMIT_NPROC 1 of a uid of its own
    worker = os.fork()
    if worker == 0:
        try:
            os.close(status_fd)  # the init's report is the init's alone
            _worker(cells, cfg, root, workdir, out_fd, worker_fd, sandbox_uid if drop_uid else None,
                    nproc_base, libc, features)
        except BaseException as exc:  # noqa: BLE001 -- confinement failed: report it, run nothing
            _write_status(worker_fd, {"worker": {"setup_error": f"sandbox setup failed: {exc!r}"[:1000]}})
        finally:
            os._exit(70)
    os.close(out_fd)
    os.close(worker_fd)
    timed_out = [False]

    def on_alarm(signum, frame):
        timed_out[0] = True
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(cfg["timeout"]))
    status, usage = 0, None
    while True:  # as PID 1 this process also reaps the worker's orphaned children
        try:
            pid, st, ru = os.wait4(-1, 0)
        except ChildProcessError:
            break
        if pid == worker:
            status, usage = st, ru
            break
    signal.setitimer(signal.ITIMER_REAL, 0)
    report = {"isolation": isolation, "timeout": timed_out[0], "problems": problems}
    if os.WIFSIGNALED(status):
        report["signal"] = os.WTERMSIG(status)
    else:
        report["exit_code"] = os.WEXITSTATUS(status)
    if usage is not None:
        report["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 4)
        report["max_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    if mode == "none":
        try:
            os.killpg(worker, signal.SIGKILL)
        except OSError:
            pass
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    _write_status(status_fd, {"init": report})
    os._exit(0)


def _readable_by_others(paths: list[str]) -> bool:
    import stat

    for path in paths:
        path = os.path.realpath(path)
        while True:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
            if path == "/":
                break
            path = os.path.dirname(path)
    return True


def _locked_flags(path: str) -> int:
    """The flags of the mount holding ``path`` that a bind remount must keep (the kernel refuses to clear them
    in a user namespace)."""
    st = os.statvfs(path)
    flags = 0
    for bit, flag in ((os.ST_NOSUID, _MS_NOSUID), (os.ST_NODEV, _MS_NODEV), (os.ST_NOEXEC, _MS_NOEXEC),
                      (os.ST_NOATIME, _MS_NOATIME), (os.ST_NODIRATIME, _MS_NODIRATIME),
                      (os.ST_RELATIME, _MS_RELATIME), (os.ST_RDONLY, _MS_RDONLY)):
        if st.f_flag & bit:
            flags |= flag
    return flags


def _system_paths() -> list[str]:
    """What the sandbox sees of the host, read-only: the system directories and the Python installation."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable))):
        p = os.path.realpath(p)
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths):
            paths.append(p)
    if sys.prefix != sys.base_prefix:
        paths.append(sys.prefix)  # a virtual environment: its own path, even where it is a symlink
    return paths


def _build_root(libc, root: str, cfg: dict, uid: int, mode: str) -> str:
    """A new root: tmpfs with read-only binds of the system, /dev's harmless nodes, /proc of the new PID
    namespace, writable tmpfs /sandbox and /tmp; the root itself read-only."""
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=4m,mode=0755")
    # The writable directories first: a Python installation under /tmp (a CI checkout's venv) is then bound
    # inside the new /tmp instead of being hidden by it.
    size = int(cfg["disk_mb"])
    owner = f",uid={uid},gid={uid}" if mode == "namespaces" else ""
    for name, mode_bits in (("sandbox", "0700"), ("tmp", "1777")):
        os.makedirs(root + "/" + name)
        _mount(libc, "tmpfs", root + "/" + name, "tmpfs", _MS_NOSUID | _MS_NODEV,
               f"size={size}m,mode={mode_bits}{owner if name == 'sandbox' else ''}")
    for path in _system_paths():
        if not os.path.lexists(path):
            continue
        target = root + path
        if os.path.islink(path) and os.path.dirname(path) == "/":
            os.symlink(os.readlink(path), target)  # merged /usr: /bin -> usr/bin
            continue
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
            path = os.path.realpath(path)
            target = root + path
            if os.path.exists(target):
                continue
        os.makedirs(target, exist_ok=True)
        _mount(libc, path, target, None, _MS_BIND | _MS_REC)
        _mount(libc, None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
               | _locked_flags(path))
    os.makedirs(root + "/dev")
    for node in ("null", "zero", "random", "urandom"):
        open(root + "/dev/" + node, "w").close()
        _mount(libc, "/dev/" + node, root + "/dev/" + node, None, _MS_BIND)
    os.makedirs(root + "/etc")
    if os.path.exists("/etc/ld.so.cache"):
        open(root + "/etc/ld.so.cache", "w").close()
        _mount(libc, "/etc/ld.so.cache", root + "/etc/ld.so.cache", None, _MS_BIND)
        _mount(libc, None, root + "/etc/ld.so.cache", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY
               | _locked_flags("/etc/ld.so.cache"))
    with open(root + "/etc/passwd", "w") as fh:
        fh.write(f"root:x:0:0::/root:/bin/false\nsandbox:x:{uid}:{uid}::/sandbox:/bin/false\n")
    with open(root + "/etc/group", "w") as fh:
        fh.write(f"root:x:0:\nsandbox:x:{uid}:\n")
    with open(root + "/etc/hosts", "w") as fh:
        fh.write("127.0.0.1 localhost\n")
    os.makedirs(root + "/proc")
    try:
        _mount(libc, "proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    except OSError:
        pass  # a process listing is a convenience, not a requirement
    _mount(libc, None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4m,mode=0755")
    return root


def _worker(cells, cfg, root, workdir, out_fd, status_fd, uid, nproc_base, libc, features) -> None:
    """The process that runs the code: confine it, then run the cells (replay) and report the last one.
    ``status_fd`` is the worker's own report pipe, which the code can write to as well."""
    import resource

    if root is None:
        os.setpgid(0, 0)  # without a PID namespace, the init kills this process group at the end
    try:
        with open("/proc/self/statm") as fh:  # before the chroot: /proc may be missing there
            size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")  # the address space this process has
    except OSError:
        size = 0
    if features["keyring"]:
        _join_session_keyring(libc)  # before the uid changes: no key of the caller's session stays reachable
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    keep = sorted({0, 1, 2, status_fd})
    for low, high in zip(keep, keep[1:] + [65536]):
        os.closerange(low + 1, high)  # nothing else inherited: no socket to the launcher, no other pipe
    if root is not None:
        os.chroot(root)
    os.chdir(workdir)
    mib = 1024 * 1024
    single = not cfg["subprocesses"]
    # One process: the filter refuses new processes and lets threads be; without a filter, RLIMIT_NPROC of 1
    # (the worker itself) refuses both.
    tasks = 1 if single and not features["seccomp"] else int(cfg["max_processes"])
    # memory_mb bounds the execution as a whole. RLIMIT_AS is per process, so where the code may start processes
    # (at most max_processes at once, by RLIMIT_NPROC) each gets an equal share: together they stay within it.
    memory = int(cfg["memory_mb"]) * mib // (1 if single else int(cfg["max_processes"]))
    if memory < size + _MIN_ROOM_MB * mib:
        raise MemoryError(f"memory_mb {cfg['memory_mb']} leaves {memory // mib} MiB of address space per process"
                          f"{'' if single else ' (memory_mb / max_processes)'}; the interpreter alone takes "
                          f"{size // mib} MiB: raise memory_mb" + ("" if single else " or lower max_processes"))
    limits = [(resource.RLIMIT_AS, memory),
              (resource.RLIMIT_CPU, (int(cfg["cpu_seconds"]), int(cfg["cpu_seconds"]) + 1)),
              (resource.RLIMIT_NPROC, nproc_base + tasks),
              (resource.RLIMIT_FSIZE, int(cfg["disk_mb"]) * mib),
              (resource.RLIMIT_NOFILE, 256),
              (resource.RLIMIT_CORE, 0)]
    for which, value in limits:
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(which, (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if features["keyring"] and not features["seccomp"]:
            # Without the filter the code can add keys to this uid's user keyrings, which outlive the execution:
            # empty them of an earlier execution's (uids are reused with pids). Only for a uid of our own.
            _keyctl(libc, _KEYCTL_CLEAR, _KEY_SPEC_USER_KEYRING)
            _keyctl(libc, _KEYCTL_CLEAR, _KEY_SPEC_USER_SESSION_KEYRING)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if features["seccomp"]:
        _install_seccomp(libc, allow_processes=not single)
    os.environ.clear()
    os.environ.update(_sandbox_environment())
    if root is None:  # no namespaces: the temporary directory stands in for /sandbox and /tmp
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    error = _run_cells(cells)
    _write_status(status_fd, {"worker": {"error": error, "done": True}})
    os._exit(0)


def _run_cells(cells: list[str]) -> str | None:
    """Run the cells in one namespace; output of all but the last goes to /dev/null. Return the last cell's
    error line, or None."""
    import ast
    import builtins
    import random
    import traceback

    random.seed(0)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(0)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    saved_out, saved_err = os.dup(1), os.dup(2)
    devnull = os.open("/dev/null", os.O_WRONLY)
    error = None
    for i, source in enumerate(cells):
        last = i == len(cells) - 1
        os.dup2(saved_out if last else devnull, 1)
        os.dup2(saved_err if last else devnull, 2)
        try:
            tree = ast.parse(source, filename=f"<cell {i + 1}>")
            tail = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):  # a notebook shows the last expression
                tail = ast.Expression(tree.body.pop().value)
            exec(compile(tree, f"<cell {i + 1}>", "exec"), namespace)
            if tail is not None:
                value = eval(compile(tail, f"<cell {i + 1}>", "eval"), namespace)
                if value is not None:
                    print(repr(value))
            if last:
                error = None
        except BaseException as exc:  # noqa: BLE001 -- any failure of the model's code is its result
            if isinstance(exc, SystemExit) and exc.code in (None, 0):
                continue
            if last:
                tb = exc.__traceback__
                while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
                    tb = tb.tb_next  # show the model its own frames, not the runner's
                traceback.print_exception(type(exc), exc, tb)
                error = traceback.format_exception_only(type(exc), exc)[-1].strip()[:500]
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
    return error


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--launcher":
    _launcher_main(int(sys.argv[2]), json.loads(sys.argv[3]))
