"""The symbolic step of math-answer equality (:mod:`turnrl.rewards.math_answers`, step 4), in a worker process.

sympy can hang on an innocent-looking input such as ``10^{10^{10}}``, so math-verify runs in a separate process with
a hard limit: once it has spent ``timeout`` seconds of CPU time on a comparison (CPU, so that the verdict does not
depend on the machine's load; ten times that in wall time at most), the worker is killed and restarted and the
answer counts as not equal. math-verify's own time limit (``signal.alarm``) is off: it works only in a main thread
and would take the caller's alarm.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time

DEFAULT_TIMEOUT = 5.0


_ALLOWED_NAMES = {"sqrt", "pi", "exp", "log", "ln", "sin", "cos", "tan", "asin", "acos", "atan", "E", "I", "oo"}
_SAFE_EXPR = re.compile(r"[0-9a-zA-Z\s.+\-*/^()=]*")


def _safe_for_parse_expr(s: str) -> bool:
    """``parse_expr`` evaluates Python: only digits, operators, single-letter symbols and known functions."""
    if not _SAFE_EXPR.fullmatch(s) or "__" in s or re.search(r"[a-zA-Z]\s*\.", s):
        return False
    return all(len(name) == 1 or name in _ALLOWED_NAMES for name in re.findall(r"[a-zA-Z]+", s))


def _read(s: str) -> list:
    """math-verify's reading of a normalised answer: LaTeX, and plain notation ("sqrt(2)/2", "2x+1") only when
    it is safe for ``parse_expr``, which evaluates Python."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(boxed_match_priority=-1)]
    if "\\" not in s and "{" not in s and _safe_for_parse_expr(s):
        configs.append(ExprExtractionConfig())
    return parse(f"${s}$", extraction_config=configs, parsing_timeout=None, raise_on_error=False)


def sympy_equal(a: str, b: str) -> bool:
    """The symbolic comparison itself (no time limit: call it through :func:`symbolic_equal`): math-verify's
    parse and verify on both sides, gold first as its API expects."""
    from math_verify import verify

    ea, eb = _read(a), _read(b)
    if not ea or not eb:
        return False
    return bool(verify(eb, ea, float_rounding=6, timeout_seconds=None, raise_on_error=False))


class _SympyWorker:
    """A child process that runs :func:`sympy_equal`, so that a parse or simplification that hangs is killed."""

    MEMORY_MB = 2048

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.timeouts = 0
        """How many comparisons were cut off by the time limit (since this process started)."""

    def _start(self) -> subprocess.Popen | None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "turnrl.rewards.symbolic", "--worker"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            # It says "ready" once sympy is imported, so that no comparison's time limit pays for the import.
            ready, _, _ = select.select([self.proc.stdout], [], [], 120)
            if not ready or self.proc.stdout.readline().strip() != "ready":
                self._kill()
                return None
        return self.proc

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def equal(self, a: str, b: str, timeout: float) -> bool | None:
        with self.lock:
            proc = self._start()
            if proc is None:
                return None
            try:
                proc.stdin.write(json.dumps([a, b]) + "\n")
                proc.stdin.flush()
                line = self._answer(proc, timeout)
            except OSError:
                line = ""
            if not line:
                self.timeouts += 1
                self._kill()
                return None
            return bool(json.loads(line))

    @staticmethod
    def _answer(proc: subprocess.Popen, timeout: float) -> str:
        """The worker's answer, or "" once it has spent ``timeout`` CPU seconds on the question (CPU, not wall
        time, so that a verdict does not depend on how busy the machine is; 10x in wall time as a backstop)."""
        start_cpu = _cpu_seconds(proc.pid)
        wall_deadline = time.monotonic() + 10 * timeout
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], min(0.05, timeout))
            if ready:
                return proc.stdout.readline()
            cpu = _cpu_seconds(proc.pid)
            spent = cpu - start_cpu if cpu is not None and start_cpu is not None else 0.0
            if spent > timeout or time.monotonic() > wall_deadline or proc.poll() is not None:
                return ""

    def close(self) -> None:
        with self.lock:
            self._kill()


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a process so far, from /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_WORKER = _SympyWorker()


def symbolic_equal(a: str, b: str, timeout: float = DEFAULT_TIMEOUT) -> bool | None:
    """:func:`sympy_equal` with a hard time limit: True, False, or None when it ran out of time."""
    return _WORKER.equal(a, b, timeout)


def symbolic_timeouts() -> int:
    """How many symbolic comparisons in this process were cut off by the time limit."""
    return _WORKER.timeouts


def _worker_main() -> None:
    import resource

    limit = _SympyWorker.MEMORY_MB * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a runaway power raises MemoryError, not swaps
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeout is off, each call
    sympy_equal("\\frac{1}{2}", "0.5")  # loads sympy and the LaTeX parser before any comparison is timed
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        a, b = json.loads(line)
        try:
            result = sympy_equal(a, b)
        except Exception:  # noqa: BLE001 -- MemoryError, RecursionError, sympy internals: not equal
            result = False
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker_main()
