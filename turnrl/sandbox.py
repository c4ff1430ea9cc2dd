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
- resource limits (``setrlimit``): address space, CPU seconds, number of processes (fork bombs), file size, open
  files, no core dumps; a wall-clock timeout enforced by the execution's own init process and again by the host;
- a minimal environment (no variable of the calling process is inherited) and no inherited file descriptors;
- output capped (the rest is drained and dropped); on failure, the error's last line ("ZeroDivisionError:
  division by zero"), as 003's executor returns it.

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

FULL_ISOLATION = ("net", "mount", "pid", "ipc", "uts", "chroot", "uid", "no_new_privs", "rlimits")

TIMEOUT_TEXT = "Timeout Error"
EMPTY_OUTPUT_TEXT = "Result is not defined"
"""003's executor answers an execution that printed nothing with this text."""

_MAX_REQUEST = 200_000  # bytes of one request (the cells); a datagram on the launcher's socket


@dataclass
class SandboxConfig:
    """Limits of one execution and how many run at once."""

    timeout: float = 5.0
    """Wall-clock seconds per execution (all cells of the program together)."""
    cpu_seconds: int = 10
    """CPU seconds per process (RLIMIT_CPU)."""
    memory_mb: int = 1024
    """Address space per process, MiB (RLIMIT_AS)."""
    max_processes: int = 16
    """Processes and threads the code may have at once (RLIMIT_NPROC of its own uid)."""
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
        return the last cell's result."""
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
        with ThreadPoolExecutor(max_workers=min(self.config.workers, len(programs))) as pool:
            return list(pool.map(self.run, programs))

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
        start = time.monotonic()
        out_r, out_w = os.pipe()
        st_r, st_w = os.pipe()
        try:
            self._send(json.dumps({"op": "run", "id": rid}).encode() + b"\n" + data, [out_w, st_w])
        except _LauncherGone:
            for fd in (out_r, out_w, st_r, st_w):
                os.close(fd)
            raise
        os.close(out_w)
        os.close(st_w)
        # The execution's own init enforces the timeout; the host waits longer, for start-up on a busy machine.
        deadline = start + config.timeout + 10.0
        limit = config.max_output_chars * 4  # bytes: enough for max_output_chars characters of UTF-8
        head, total, status_buf = bytearray(), 0, bytearray()
        open_fds = {out_r, st_r}
        final_seen_at = None
        killed = False
        try:
            while open_fds:
                now = time.monotonic()
                if final_seen_at is not None and now - final_seen_at > 1.0:
                    break  # the init reported; stray writers (degraded isolation only) are not waited for
                if now > deadline:
                    self._kill(rid)
                    killed = True
                    break
                ready, _, _ = select.select(list(open_fds), [], [], min(0.5, deadline - now))
                for fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        open_fds.discard(fd)
                    elif fd == out_r:
                        total += len(chunk)
                        if len(head) < limit:
                            head += chunk[: limit - len(head)]
                    else:
                        status_buf += chunk
                        if final_seen_at is None and b'"init"' in status_buf:
                            final_seen_at = time.monotonic()
        finally:
            os.close(out_r)
            os.close(st_r)
        if final_seen_at is None and not self.alive():
            raise _LauncherGone()  # the execution died with the launcher: run it again on a new one
        return _make_result(head, total, bytes(status_buf), killed, config, time.monotonic() - start)

    def _kill(self, rid: int) -> None:
        try:
            self._send(json.dumps({"op": "kill", "id": rid}).encode() + b"\n", [])
        except _LauncherGone:
            pass


def _stop_launcher(proc: subprocess.Popen, sock: socket.socket) -> None:
    try:
        sock.close()  # the launcher exits on end-of-file and kills what still runs
    finally:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _make_result(head: bytearray, total: int, status: bytes, killed: bool, config: SandboxConfig,
                 wall: float) -> ExecResult:
    worker, init = {}, {}
    for line in status.decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # the sandboxed code can write here too; it can only spoil its own result
        if isinstance(obj, dict):
            worker = obj.get("worker", worker) if isinstance(obj.get("worker"), dict) else worker
            init = obj.get("init", init) if isinstance(obj.get("init"), dict) else init
    text = head.decode("utf-8", "replace")
    truncated = total > len(head) or len(text) > config.max_output_chars
    if truncated:
        text = text[: config.max_output_chars] + f"\n[output truncated: {total} bytes in all]"
    result = ExecResult(output=text, status="ok", truncated=truncated, wall_seconds=round(wall, 4),
                        cpu_seconds=float(init.get("cpu_seconds", 0.0)),
                        max_rss_mb=float(init.get("max_rss_mb", 0.0)),
                        isolation=list(init.get("isolation", [])))
    if killed or init.get("timeout"):
        result.status, result.error = "timeout", TIMEOUT_TEXT
    elif not init or init.get("setup_error") or worker.get("setup_error"):
        reason = init.get("setup_error") or worker.get("setup_error") or "the sandbox failed"
        result.status, result.error = "sandbox_error", str(reason)
    elif init.get("signal"):
        sig = int(init["signal"])
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
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_UID_BASE = 1_000_000_000  # sandbox uids: base + the launcher child's pid, so concurrent executions never share


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


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
    sock.send(json.dumps({"ready": True}).encode())
    children: dict[int, int] = {}  # request id -> pid
    sock.settimeout(0.5)
    try:
        while True:
            _reap(children)
            try:
                msg, fds, _, _ = socket.recv_fds(sock, _MAX_REQUEST + 4096, 4)
            except socket.timeout:
                continue
            except OSError:
                break
            if not msg:
                break
            header, _, body = msg.partition(b"\n")
            req = json.loads(header)
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
                    _execution(json.loads(body), fds[0], fds[1], mount_point)
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


def _execution(request: dict, out_fd: int, status_fd: int, mount_point: str) -> None:
    """One execution, in a child of the launcher: enter new namespaces, then fork the init of the sandbox."""
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
        _init(request["cells"], cfg, mode, problems, out_fd, status_fd, mount_point, libc, sandbox_uid, nproc_base)
        return
    os.close(out_fd)
    os.close(status_fd)
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


def _init(cells, cfg, mode, problems, out_fd, status_fd, mount_point, libc, sandbox_uid, nproc_base) -> None:
    """PID 1 of the sandbox: build its filesystem, fork the worker, enforce the wall clock, report, exit (which
    kills every process left in the PID namespace)."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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
    worker = os.fork()
    if worker == 0:
        try:
            _worker(cells, cfg, root, workdir, out_fd, status_fd, sandbox_uid if drop_uid else None,
                    nproc_base, libc)
        except BaseException as exc:  # noqa: BLE001 -- confinement failed: report it, run nothing
            _write_status(status_fd, {"worker": {"setup_error": f"sandbox setup failed: {exc!r}"}})
        finally:
            os._exit(70)
    os.close(out_fd)
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


def _worker(cells, cfg, root, workdir, out_fd, status_fd, uid, nproc_base, libc) -> None:
    """The process that runs the code: confine it, then run the cells (replay) and report the last one."""
    import resource

    if root is None:
        os.setpgid(0, 0)  # without a PID namespace, the init kills this process group at the end
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
    limits = [(resource.RLIMIT_AS, int(cfg["memory_mb"]) * mib),
              (resource.RLIMIT_CPU, (int(cfg["cpu_seconds"]), int(cfg["cpu_seconds"]) + 1)),
              (resource.RLIMIT_NPROC, nproc_base + int(cfg["max_processes"])),
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
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
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
