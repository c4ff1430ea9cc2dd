"""The sandbox against hostile code: every snippet has an expected outcome, nothing escapes, and the sandbox keeps
serving the next call."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from turnrl.sandbox import (CELL_SEPARATOR, EMPTY_OUTPUT_TEXT, FULL_ISOLATION, TIMEOUT_TEXT, ExecResult, Sandbox,
                            SandboxConfig, join_cells, split_cells)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

PROJECT = Path(__file__).resolve().parents[1]
SECRET_VAR = "TURNRL_SANDBOX_TEST_SECRET"
SECRET_VALUE = f"s3cr3t-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def box():
    os.environ[SECRET_VAR] = SECRET_VALUE  # set before the launcher starts: it must not inherit it
    sandbox = Sandbox(SandboxConfig(timeout=2.0, cpu_seconds=5, memory_mb=256, max_processes=16, disk_mb=16,
                                    max_output_chars=500))
    yield sandbox
    sandbox.close()
    os.environ.pop(SECRET_VAR, None)


@pytest.fixture(scope="module")
def forking_box():
    """A sandbox whose code may start processes (``subprocesses=True``: each of the 16 gets 256 MiB)."""
    sandbox = Sandbox(SandboxConfig(timeout=2.0, cpu_seconds=5, memory_mb=16 * 256, max_processes=16, disk_mb=16,
                                    max_output_chars=500, subprocesses=True, preload=[]))
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def isolated(box) -> Sandbox:
    """The sandbox, where this machine grants it network and filesystem isolation (else the test is skipped)."""
    result = box.run("print('probe')")
    missing = {"net", "mount", "chroot"} - set(result.isolation)
    if missing:
        pytest.skip(f"this machine does not grant {sorted(missing)} to the sandbox")
    return box


def sandbox_processes() -> list[int]:
    """Host pids of processes running as a sandbox uid (the sandbox gives each execution a uid >= 1e9)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid >= 1_000_000_000:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def assert_still_serving(box: Sandbox) -> None:
    result = box.run("print(6 * 7)")
    assert result.status == "ok" and result.output == "42\n", result


def test_plain_code_output_and_last_expression(box):
    result = box.run("import math\nprint('radius', 2)\nmath.pi * 2 ** 2")
    assert result.status == "ok"
    assert result.output == "radius 2\n12.566370614359172\n"  # pi * 4, printed as a notebook shows a value
    assert result.observation == result.output.strip()
    assert result.error is None


def test_full_isolation_on_this_machine(box):
    """We run as root here: every mechanism must apply (a regression to a weaker level would fail this)."""
    result = box.run("print(1)")
    if os.geteuid() != 0:
        pytest.skip("full isolation needs root")
    assert set(result.isolation) == set(FULL_ISOLATION)


def test_replay_carries_state_and_returns_only_the_last_cell(box):
    cells = ["x = 5\nprint('first cell output')", "y = x * 2\nundefined_name", "print(x + y)"]
    result = box.run(cells)
    assert result.status == "ok"
    assert result.output == "15\n"  # 5 + 10; the earlier output and the earlier error are not shown
    assert box.run(join_cells(cells)).output == "15\n"
    assert split_cells(join_cells(cells)) == cells and CELL_SEPARATOR in join_cells(cells)


def test_error_returns_the_last_line(box):
    result = box.run(["values = [1, 2]", "total = sum(values)\nprint('partial')\nvalues[5]"])
    assert result.status == "error"
    assert result.error == "IndexError: list index out of range"
    assert result.observation == "IndexError: list index out of range"
    assert "partial" in result.output and "Traceback" in result.output
    syntax = box.run("def f(:\n    pass")
    assert syntax.status == "error" and syntax.error.startswith("SyntaxError")


def test_empty_output_reads_as_003s_message(box):
    result = box.run("x = 1")
    assert result.status == "ok" and result.output == ""
    assert result.observation == EMPTY_OUTPUT_TEXT


def test_infinite_loop_times_out(box):
    start = time.monotonic()
    result = box.run("while True:\n    pass")
    elapsed = time.monotonic() - start
    assert result.status == "timeout" and result.observation == TIMEOUT_TEXT
    assert 2.0 <= elapsed < 8.0
    assert_still_serving(box)


def test_sleep_past_the_timeout_is_killed(box):
    result = box.run("import time\nprint('before', flush=True)\ntime.sleep(60)\nprint('after')")
    assert result.status == "timeout"
    assert "after" not in result.output


def test_cpu_time_limit():
    with Sandbox(SandboxConfig(timeout=20, cpu_seconds=1)) as sandbox:
        sandbox.run("1")  # start the launcher
        start = time.monotonic()
        result = sandbox.run("while True:\n    pass")
        assert result.status == "cpu_limit", result
        assert time.monotonic() - start < 15  # stopped by the CPU limit, before the 20 s wall clock


def test_memory_bomb_hits_the_limit(box):
    at_once = box.run("x = bytearray(2 * 1024 ** 3)")
    assert at_once.status == "error" and at_once.error == "MemoryError"
    gradual = box.run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))")
    assert gradual.status == "error" and gradual.error == "MemoryError"
    assert gradual.max_rss_mb < 256 + 32  # the limit (256 MiB of address space) held
    assert_still_serving(box)


def test_fork_bomb_is_contained_and_leaves_nothing_behind(box, forking_box):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    refused = box.run("import os\nos.fork()")  # by default the code is one process: fork is refused
    assert refused.status == "error" and refused.error.startswith("PermissionError"), refused
    assert box.run(bomb).status == "timeout"
    box = forking_box  # where processes are allowed, the process limit and the PID namespace contain the bomb
    result = box.run(bomb)
    assert result.status == "timeout"
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == []  # the PID namespace took every child with it
    counted = box.run("import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                      "            import time; time.sleep(30)\n        n += 1\nexcept OSError:\n    print(n)")
    assert counted.status == "ok" and 0 < int(counted.output) < 16  # the process limit stopped it
    assert_still_serving(box)


def test_background_process_dies_with_the_execution(forking_box):
    result = forking_box.run("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\n"
                             "print('parent done')")
    assert result.status == "ok" and result.output == "parent done\n"
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == []


def test_no_network_even_to_loopback(isolated):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept_loop(stop: threading.Event):
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except socket.timeout:
                continue

    stop = threading.Event()
    thread = threading.Thread(target=accept_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        # The listener works: a connection from the test itself is accepted.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        deadline = time.monotonic() + 2
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(accepted) == 1
        result = isolated.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                              "s.sendall(b'escaped')\nprint('connected')")
        time.sleep(0.3)
        assert result.status == "error" and "connected" not in result.output
        assert "unreachable" in result.error.lower() or "refused" in result.error.lower(), result.error
        assert len(accepted) == 1  # nothing came from the sandbox
        udp = isolated.run(f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                           f"s.sendto(b'x', ('127.0.0.1', {port}))")
        assert udp.status == "error"
        interfaces = isolated.run("import socket\nprint(sorted(n for _, n in socket.if_nameindex()))")
        assert interfaces.output == "['lo']\n"  # only the namespace's own loopback, and it is down
    finally:
        stop.set()
        thread.join()
        for conn, _ in accepted:
            conn.close()
        server.close()


def test_project_and_home_files_are_invisible(isolated, tmp_path):
    home_secret = Path.home() / f"turnrl-sandbox-secret-{uuid.uuid4().hex}.txt"
    home_secret.write_text(SECRET_VALUE)
    try:
        for path in [PROJECT / "pyproject.toml", PROJECT / "turnrl" / "sandbox.py", home_secret,
                     tmp_path / "nothing.txt"]:
            if path.name == "nothing.txt":
                path.write_text(SECRET_VALUE)
            assert path.exists()
            result = isolated.run(f"print(open({str(path)!r}).read())")
            assert result.status == "error", (path, result)
            assert result.error.startswith(("FileNotFoundError", "PermissionError")), result.error
            assert SECRET_VALUE not in result.output
        listing = isolated.run("import os\nprint(sorted(os.listdir('/')), os.path.exists('/work/main/turnrl'))")
        assert "False" in listing.output and "home" not in listing.output
        passwd = isolated.run("print(open('/etc/passwd').read(), end='')")  # the sandbox's own, not the host's
        assert passwd.status == "ok" and passwd.output != Path("/etc/passwd").read_text()
        assert "nobody" not in passwd.output and "sandbox:x:" in passwd.output
        assert isolated.run("open('/etc/shadow')").error.startswith("FileNotFoundError")
    finally:
        home_secret.unlink()


def test_writes_outside_the_work_directory_fail_or_stay_inside(isolated):
    name = f"turnrl-sandbox-write-{uuid.uuid4().hex}"
    targets = [PROJECT / name, Path.home() / name, Path("/usr") / name]
    for target in targets:
        result = isolated.run(f"open({str(target)!r}, 'w').write('x')")
        assert result.status == "error", (target, result)
        assert not target.exists()
    # /tmp inside is the sandbox's own tmpfs: the write succeeds there and never reaches the host's /tmp.
    result = isolated.run(f"open('/tmp/{name}', 'w').write('x')\nimport os\nprint(os.getcwd())")
    assert result.status == "ok" and result.output == "/sandbox\n"
    assert not (Path("/tmp") / name).exists()
    # The working directory is fresh: a file written in one execution is gone in the next.
    isolated.run("open('note.txt', 'w').write('hello')")
    assert isolated.run("import os\nprint(os.listdir('.'))").output == "[]\n"
    too_big = isolated.run("open('big.bin', 'wb').write(b'x' * (64 * 1024 ** 2))")
    assert too_big.status != "ok"  # 16 MiB file-size and tmpfs limits


def test_environment_secrets_are_not_inherited(box):
    assert os.environ.get(SECRET_VAR) == SECRET_VALUE
    result = box.run("import os\nprint(dict(os.environ))\n"
                     "import glob\nfor p in ['/proc/self/environ'] + glob.glob('/proc/[0-9]*/environ'):\n"
                     "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(p, e)")
    assert result.status == "ok"
    assert SECRET_VALUE not in result.output and SECRET_VAR not in result.output
    assert "'HOME': '/sandbox'" in result.output


def test_huge_output_is_truncated(box):
    start = time.monotonic()
    result = box.run("import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 100_000)")
    assert result.status == "ok" and result.truncated
    assert result.output.startswith("y" * 500)
    assert result.output.endswith("[output truncated: 20000000 bytes in all]")
    assert len(result.output) < 600
    assert time.monotonic() - start < 10
    assert_still_serving(box)


def test_os_exit_and_crashes(box):
    exited = box.run("print('bye', flush=True)\nimport os\nos._exit(3)")
    assert exited.status == "exited" and exited.error == "Process exited with code 3"
    assert exited.output == "bye\n"
    segv = box.run("import ctypes\nctypes.string_at(0)")
    assert segv.status == "crashed" and segv.error == "Process killed by signal SIGSEGV"
    kill = box.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert kill.status == "crashed" and "SIGSEGV" in kill.error
    sys_exit = box.run("import sys\nsys.exit(4)")
    assert sys_exit.status == "error" and sys_exit.error == "SystemExit: 4"
    assert_still_serving(box)


def test_cannot_reach_other_processes_or_regain_privileges(isolated):
    result = isolated.run("import os\nprint(os.getuid(), os.geteuid(), len([p for p in os.listdir('/proc') "
                          "if p.isdigit()]))\ntry:\n    os.setuid(0)\nexcept PermissionError as e:\n    print('denied')")
    uid, euid, n_procs = result.output.split()[:3]
    assert int(uid) >= 1_000_000_000 and uid == euid
    assert int(n_procs) <= 3  # its init, itself, and nothing of the host
    assert "denied" in result.output
    kill_host = isolated.run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)")
    assert kill_host.status == "error" and kill_host.error.startswith("ProcessLookupError")


def test_input_reads_end_of_file(box):
    result = box.run("input('number? ')")
    assert result.status == "error" and result.error.startswith("EOFError")


def test_executions_are_deterministic(box):
    code = "import random, numpy as np\nprint(random.random(), np.random.rand(), hash('abc'), {'b', 'a', 'c'})"
    first, second = box.run(code), box.run(code)
    assert first.status == "ok" and first.output == second.output


def test_many_in_parallel():
    with Sandbox(SandboxConfig(timeout=10, workers=8)) as sandbox:
        sandbox.run("1")  # start the launcher
        start = time.monotonic()
        results = sandbox.run_many([f"import time\ntime.sleep(1)\nprint({i} ** 2)" for i in range(8)])
        elapsed = time.monotonic() - start
    assert [r.output for r in results] == [f"{i * i}\n" for i in range(8)]
    assert elapsed < 6.0  # eight one-second sleeps overlapped (one after another they take over 8 s)


def test_launcher_restarts_after_it_dies(box):
    launcher = box._launcher
    assert launcher is not None
    launcher.proc.kill()
    launcher.proc.wait()
    assert_still_serving(box)
    assert box._launcher is not launcher


def test_degraded_mode_still_limits_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="turnrl.sandbox"):
        with Sandbox(SandboxConfig(timeout=1.0, isolation="none")) as sandbox:
            result = sandbox.run("print('hello')")
            timed = sandbox.run("while True:\n    pass")
    assert result.status == "ok" and result.output == "hello\n"
    assert "net" not in result.isolation and "chroot" not in result.isolation and "rlimits" in result.isolation
    assert timed.status == "timeout"
    assert any("reduced isolation" in r.getMessage() and "net" in r.getMessage() for r in caplog.records)


def test_user_namespace_mode(tmp_path):
    with Sandbox(SandboxConfig(timeout=2.0, isolation="userns")) as sandbox:
        result = sandbox.run(f"print(open({str(PROJECT / 'pyproject.toml')!r}).read())")
    if result.status == "sandbox_error":
        pytest.skip(f"no user namespaces here: {result.error}")
    assert "user" in result.isolation and "net" in result.isolation and "chroot" in result.isolation
    assert result.status == "error" and result.error.startswith("FileNotFoundError")


def test_bad_isolation_name():
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(SandboxConfig(isolation="docker"))


def test_result_observation_rules():
    assert ExecResult(output="  7\n", status="ok").observation == "7"
    assert ExecResult(output="", status="timeout", error=TIMEOUT_TEXT).observation == "Timeout Error"
    assert ExecResult(output="Traceback...", status="error", error="KeyError: 'a'").observation == "KeyError: 'a'"


# --------------------------------------------------------------------------------------------------------------
# Audit findings: the session keyring, a forged status pipe, memory across processes

KEYRING_HOST = r'''
import ctypes, json, os, platform, sys
sys.path.insert(0, sys.argv[1])
from turnrl.sandbox import Sandbox, SandboxConfig

NR = {"x86_64": (250, 248), "aarch64": (219, 217)}  # keyctl, add_key
if platform.machine() not in NR:
    print(json.dumps({"skip": f"no keyctl syscall numbers for {platform.machine()}"}))
    sys.exit()
KEYCTL, ADD_KEY = NR[platform.machine()]
L = ctypes.c_long
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(*args):
    ctypes.set_errno(0)
    return libc.syscall(*[a if not isinstance(a, int) else L(a) for a in args]), ctypes.get_errno()

# A session keyring of our own (as after `keyctl session`) holding a secret "user" key.
ring, err = call(KEYCTL, 1, ctypes.c_char_p(b"turnrl-test-session"))  # KEYCTL_JOIN_SESSION_KEYRING
if ring < 0:
    print(json.dumps({"skip": f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(err)}"}))
    sys.exit()
secret = sys.argv[3].encode()
key, err = call(ADD_KEY, b"user", sys.argv[2].encode(), secret, len(secret), -3)  # into @s
if key < 0:
    print(json.dumps({"skip": f"add_key: {os.strerror(err)}"}))
    sys.exit()
code = sys.argv[4].replace("KEYCTL", str(KEYCTL)).replace("ADD_KEY", str(ADD_KEY)).replace("SERIAL", str(key))
with Sandbox(SandboxConfig(timeout=10, preload=[])) as box:
    result = box.run(code)
planted = {name: call(KEYCTL, 10, where, b"user", name.encode(), 0)[0]  # KEYCTL_SEARCH in the host's keyrings
           for name, where in ((sys.argv[5], -3), (sys.argv[6], -4))}
print(json.dumps({"status": result.status, "output": result.output, "error": result.error,
                  "isolation": result.isolation, "host_sees": planted}))
'''

KEYRING_ATTACK = r'''
import ctypes
L = ctypes.c_long
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*args):
    ctypes.set_errno(0)
    return libc.syscall(*[a if not isinstance(a, int) else L(a) for a in args]), ctypes.get_errno()
found = call(KEYCTL, 10, -3, b"user", b"DESC", 0)  # KEYCTL_SEARCH the session keyring
stolen = b""
for serial in {found[0], SERIAL}:  # the key found, and the host's key by its serial number
    buf = ctypes.create_string_buffer(4096)
    n, _ = call(KEYCTL, 11, serial, buf, 4096)  # KEYCTL_READ
    stolen += buf.raw[:max(n, 0)]
add_s = call(ADD_KEY, b"user", b"PLANT_S", b"x", 1, -3)  # into the session keyring the host would see
add_u = call(ADD_KEY, b"user", b"PLANT_U", b"x", 1, -4)  # into the uid's user keyring, which outlives the call
print("found", found, "stolen", stolen, "add_s", add_s, "add_u", add_u)
'''


def test_session_keyring_of_the_caller_is_not_reachable(tmp_path):
    """A caller with a session keyring of its own (after `keyctl session`): the code can neither read its keys
    (search @s, read by serial number) nor add keys the host or later executions see."""
    import json
    import subprocess

    desc, secret = f"turnrl-test-{uuid.uuid4().hex}", f"keyring-{SECRET_VALUE}"
    plant_s, plant_u = f"plant-s-{uuid.uuid4().hex}", f"plant-u-{uuid.uuid4().hex}"
    attack = KEYRING_ATTACK.replace("DESC", desc).replace("PLANT_S", plant_s).replace("PLANT_U", plant_u)
    proc = subprocess.run([sys.executable, "-c", KEYRING_HOST, str(PROJECT), desc, secret, attack, plant_s, plant_u],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    assert report["status"] == "ok", report
    assert secret not in report["output"], report["output"]
    assert "stolen b''" in report["output"], report["output"]
    found = report["output"].split("found (")[1].split(")")[0]
    assert int(found.split(",")[0]) < 0, report["output"]  # the host's session keyring is not the code's
    add_s = report["output"].split("add_s (")[1].split(")")[0]
    add_u = report["output"].split("add_u (")[1].split(")")[0]
    assert report["host_sees"][plant_s] < 0 and report["host_sees"][plant_u] < 0, report
    if "seccomp" in report["isolation"]:
        assert int(add_s.split(",")[0]) < 0 and int(add_u.split(",")[0]) < 0, report["output"]
    assert "keyring" in report["isolation"], report


FIND_STATUS_FDS = ("import os\n"
                   "fds = []\n"
                   "for n in os.listdir('/proc/self/fd'):\n"
                   "    try:\n"
                   "        if int(n) > 2 and os.readlink(f'/proc/self/fd/{n}').startswith('pipe:'):\n"
                   "            fds.append(int(n))\n"
                   "    except OSError:\n        pass\n"
                   "try:  # the pipes of the sandbox's own init too (pid 1 only in a PID namespace), if it can\n"
                   "    init_fds = os.listdir('/proc/1/fd') if os.getppid() == 1 else []\n"
                   "except OSError:\n    init_fds = []\n"
                   "for n in init_fds:\n"
                   "    try:\n        fds.append(os.open(f'/proc/1/fd/{n}', os.O_WRONLY))\n"
                   "    except OSError:\n        pass\n"
                   "def forge(data):\n"
                   "    for fd in fds:\n"
                   "        try:\n            os.write(fd, data)\n        except OSError:\n            pass\n")


def test_deeply_nested_status_line_is_one_failed_call(box):
    """200,000 `[` on the status pipe: no RecursionError in the host; that call fails, the others (run_many) are
    not affected, and the sandbox keeps serving."""
    hostile = FIND_STATUS_FDS + "forge(b'[' * 200_000 + b'\\n')\nprint('forged', fds)"
    results = box.run_many(["print(1)", hostile, "print(2)"])
    assert [r.output for r in (results[0], results[2])] == ["1\n", "2\n"]
    assert results[1].status == "sandbox_error" and "status" in results[1].error, results[1]
    assert_still_serving(box)


def test_forged_init_record_is_not_believed():
    """A forged `init` record with a bad field, then an unterminated one: no exception in the host, the call
    reports an error, and the host returns only when the code is done (not about 1 s after the forgery)."""
    with Sandbox(SandboxConfig(timeout=8, preload=[])) as sandbox:
        sandbox.run("1")  # start the launcher
        start = time.monotonic()
        result = sandbox.run(FIND_STATUS_FDS + "forge(b'{\"init\": {\"cpu_seconds\": \"x\"}}\\n{\"init\": ')\n"
                             "import time\ntime.sleep(3)\nprint('finished')")
        elapsed = time.monotonic() - start
        left = sandbox_processes()
        assert elapsed >= 3.0, (elapsed, result)
        assert result.status == "sandbox_error" and "status" in result.error, result
        assert "finished" in result.output
        deadline = time.monotonic() + 0.5
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = sandbox_processes()
        assert left == []
        # A plausible forged report ("exited normally") does not end the call either: the code runs on, and the
        # wall clock stops it.
        start = time.monotonic()
        spoof = sandbox.run(FIND_STATUS_FDS + "forge(b'{\"init\": {\"isolation\": [], \"timeout\": false, "
                            "\"exit_code\": 0}}\\n{\"worker\": {\"error\": null, \"done\": true}}\\n')\n"
                            "while True:\n    pass")
        elapsed = time.monotonic() - start
        assert spoof.status == "timeout" and elapsed >= 8.0, (elapsed, spoof)
        time.sleep(0.5)
        assert sandbox_processes() == []
        assert_still_serving(sandbox)


def test_memory_limit_covers_the_execution_not_each_process():
    """Three children of 300 MiB each under a 512 MiB cap (each fits, together they do not): the execution may not
    start them (the code is one process); threads work but share the one address space, so they cannot multiply
    the cap either."""
    with Sandbox(SandboxConfig(timeout=10, memory_mb=512, preload=[])) as sandbox:
        children = sandbox.run("import os, time\nstarted = 0\nfor _ in range(3):\n    if os.fork() == 0:\n"
                               "        block = bytearray(b'x') * (300 * 1024 ** 2)\n        time.sleep(3)\n"
                               "        os._exit(0)\n    started += 1\nprint('started', started)")
        assert children.status == "error" and children.error.startswith("PermissionError"), children
        assert "started" not in children.output
        threads = sandbox.run("import threading\nbarrier = threading.Barrier(3, timeout=5)\ngot = []\n"
                              "def grab():\n    try:\n        block = bytearray(b'x') * (200 * 1024 ** 2)\n"
                              "        got.append(1)\n    except MemoryError:\n        block = None\n"
                              "    barrier.wait()  # all three hold what they got at once\n"
                              "ts = [threading.Thread(target=grab) for _ in range(3)]\n"
                              "for t in ts:\n    t.start()\nfor t in ts:\n    t.join()\nprint(len(got))")
        assert threads.status == "ok", threads
        assert 1 <= int(threads.output) < 3  # 3 x 200 MiB do not fit in 512 MiB at once
        spawned = sandbox.run("import subprocess\nsubprocess.run(['/bin/true'])")
        assert spawned.status == "error" and spawned.error.startswith("PermissionError"), spawned
    assert "single_process" in children.isolation


def test_status_parser_keeps_the_first_valid_record_and_reports_every_fault():
    from turnrl.sandbox import _MAX_STATUS, _make_result, _parse_status

    good = b'{"worker": {"error": null, "done": true}}\n'
    assert _parse_status(good, False, "worker") == ({"error": None, "done": True}, [])
    cases = {
        b"[" * 200_000 + b"\n": "a record too long",
        b"[" * 10_000 + b"\n": "a record that is not JSON",  # nested past the recursion limit
        b'\xff\xfe\n': "a record that is not JSON",
        b'{"worker": {"error": null, "done": true}': "an unterminated record",
        b'{"init": {"cpu_seconds": "x"}}\n': "an invalid record",  # another kind, and a field of the wrong type
        b'{"worker": {"error": 7, "done": true}}\n': "an invalid record",
        b'{"worker": {"error": null, "done": true, "extra": 1}}\n': "an invalid record",
        b'"worker"\n': "an invalid record",
        good + b'{"worker": {"error": "forged", "done": true}}\n': "a second record",
    }
    for data, fault in cases.items():
        record, faults = _parse_status(data, False, "worker")
        assert fault in faults, (data[:60], faults)
        assert record in (None, {"error": None, "done": True})  # never a record that did not validate
    assert _parse_status(good, True, "worker")[1] == [f"over {_MAX_STATUS} bytes"]
    init, faults = _parse_status(b'{"init": {"isolation": ["net"], "timeout": false, "signal": 1e999}}\n'
                                 b'{"init": {"isolation": [], "timeout": false, "exit_code": 0, "cpu_seconds": NaN}}\n',
                                 False, "init")
    assert init is None and faults == ["an invalid record"]
    # A faulty worker pipe is one failed call, whatever the (genuine) init says.
    config = SandboxConfig()
    init_ok = ({"isolation": ["net"], "timeout": False, "exit_code": 0, "cpu_seconds": 0.1}, [])
    result = _make_result(bytearray(b"hi\n"), 3, init_ok, (None, ["a record that is not JSON"]), False, config, 0.1)
    assert result.status == "sandbox_error" and result.error.startswith("SandboxError: invalid status report")
    assert result.observation == result.error and result.output == "hi\n"
    assert _make_result(bytearray(), 0, init_ok, ({"error": None, "done": True}, []), False, config, 0.1).ok
    assert _make_result(bytearray(), 0, (None, []), (None, []), True, config, 0.1).status == "timeout"


def test_a_failure_in_the_host_is_a_result_not_an_exception(monkeypatch):
    from turnrl import sandbox as module

    def broken(self, rid, data, config):
        raise RecursionError("maximum recursion depth exceeded")

    with Sandbox(SandboxConfig(timeout=2.0, preload=[])) as sandbox:
        assert_still_serving(sandbox)
        monkeypatch.setattr(module._Launcher, "execute", broken)
        result = sandbox.run("print(1)")
        assert result.status == "sandbox_error" and "RecursionError" in result.error
        assert [r.status for r in sandbox.run_many(["print(1)", "print(2)"])] == ["sandbox_error"] * 2
        monkeypatch.undo()
        assert_still_serving(sandbox)


def test_memory_outside_the_address_space_and_keyrings_are_refused(box, forking_box):
    """memfd_create and SysV shared memory hold memory that RLIMIT_AS does not count; keyctl reaches keyrings
    that outlive the execution. The filter refuses them, also where processes are allowed."""
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "try:\n    os.memfd_create('x')\n    print('memfd ok')\nexcept OSError as e:\n    print('memfd', e.errno)\n"
            "print('shmget', libc.shmget(0, 1 << 20, 0o1600), ctypes.get_errno())\n"  # IPC_PRIVATE, IPC_CREAT|0600
            "print('msgget', libc.msgget(0, 0o1600), ctypes.get_errno())\n")
    for sandbox in (box, forking_box):
        result = sandbox.run(code)
        if "seccomp" not in result.isolation:
            pytest.skip("no seccomp filter on this machine")
        assert result.status == "ok", result
        assert result.output == "memfd 1\nshmget -1 1\nmsgget -1 1\n", result.output


# Counts, in the execution's own memory, the occurrences of two byte strings given in hex (so that this program's
# text holds neither): every readable mapping, read through /proc/self/mem (made readable by setting the process
# dumpable again, which any process may do).
SCAN_MEMORY = """
import ctypes
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
needles = [bytes.fromhex(h) for h in {hexes!r}]
counts = [0] * len(needles)
with open('/proc/self/maps') as fh:
    maps = fh.read().splitlines()
with open('/proc/self/mem', 'rb', buffering=0) as mem:
    for line in maps:
        parts = line.split()
        low, high = (int(x, 16) for x in parts[0].split('-'))
        if not parts[1].startswith('r') or parts[-1] in ('[vvar]', '[vvar_vclock]', '[vsyscall]'):
            continue
        for start in range(low, high, 1 << 22):
            try:
                mem.seek(start)
                chunk = mem.read(min(high, start + (1 << 22) + 64) - start)  # overlapping: no string is cut
            except OSError:
                continue
            for i, needle in enumerate(needles):
                counts[i] += chunk.count(needle)
print(*counts)
"""


@pytest.mark.parametrize("subprocesses", [False, True])
def test_an_execution_holds_nothing_of_an_earlier_ones_code(subprocesses):
    """A secret in one execution's code (big programs: freed buffers of that size are not reused at once) is not in
    the next execution's memory: its count there equals that of a control string that was never sent (each is
    found once, as the needle the scan builds)."""
    config = SandboxConfig(timeout=20, memory_mb=16 * 256 if subprocesses else 1024, max_processes=16,
                           subprocesses=subprocesses, preload=[])
    with Sandbox(config) as sandbox:
        for padding in (20_000, 150_000):
            secret, control = (f"{kind}-{uuid.uuid4().hex}" for kind in ("planted", "control"))
            planted = sandbox.run(f"secret = {secret!r}\n# {'p' * padding}\nprint(len(secret))")
            assert planted.status == "ok", planted
            scan = sandbox.run(SCAN_MEMORY.format(hexes=[secret.encode().hex(), control.encode().hex()]))
            assert scan.status == "ok", scan
            found_secret, found_control = map(int, scan.output.split())
            assert found_control >= 1  # the scan finds what is there (its own needle)
            assert found_secret == found_control, (padding, scan.output)


def test_memory_limit_bounds_the_processes_together():
    """With ``subprocesses``, a parent and three children each take all the memory they can get: their peak
    resident sizes (the kernel's accounting, from wait4 and getrusage) add up to at most ``memory_mb``, and each
    process's allocations stop with MemoryError at its share."""
    code = ("import json, os, resource\n"
            "def grab():\n    chunks = []\n    try:\n        while True:\n"
            "            chunks.append(b'x' * (8 * 1024 ** 2))  # written, so resident\n"
            "    except MemoryError:\n        return len(chunks)\n"
            "pids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
            "        os._exit(min(grab(), 255))\n    pids.append(pid)\n"
            "got = [grab()]\npeaks = []\n"
            "for pid in pids:\n    _, status, usage = os.wait4(pid, 0)\n"
            "    got.append(os.waitstatus_to_exitcode(status))\n    peaks.append(usage.ru_maxrss)\n"
            "peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "print(json.dumps({'chunks': got, 'peak_kib': peaks}))")
    with Sandbox(SandboxConfig(timeout=30, memory_mb=1024, max_processes=4, subprocesses=True,
                               preload=[])) as sandbox:
        result = sandbox.run(code)
        assert result.status == "ok", result
        report = json.loads(result.output)
        assert len(report["peak_kib"]) == 4 and all(n > 0 for n in report["chunks"]), report
        assert sum(report["peak_kib"]) / 1024 <= 1024, report  # before the fix: about 3,900 MiB
        small = Sandbox(SandboxConfig(timeout=5, memory_mb=1024, max_processes=16, subprocesses=True, preload=[]))
        with small:  # 64 MiB a process is less than the interpreter itself: said at once, naming the settings
            refused = small.run("print(1)")
        assert refused.status == "sandbox_error" and "max_processes" in refused.error, refused


# Writes 64 KiB blocks without end to the execution's worker status pipe: the pipes it holds other than its output.
FLOOD_STATUS = ("import os\n"
                "output = os.readlink('/proc/self/fd/1')\n"
                "fds = []\n"
                "for n in os.listdir('/proc/self/fd'):\n"
                "    try:\n        link = os.readlink(f'/proc/self/fd/{n}')\n    except OSError:\n        continue\n"
                "    if int(n) > 2 and link.startswith('pipe:') and link != output:\n        fds.append(int(n))\n"
                "print(len(fds), flush=True)\n"
                "block = b'x' * 65536\n"
                "while True:\n"
                "    for fd in fds:\n"
                "        try:\n            os.write(fd, block)\n        except OSError:\n            pass\n")


@pytest.mark.parametrize("target", ["status", "output"])
def test_a_flood_costs_the_host_little_cpu(target):
    """A flood on the status pipe (or the output) for the whole wall clock: the host's own CPU time over the
    call stays far below it (before the fix the host read the flood to the end: about 2 s of CPU in a 3 s call),
    and the call fails as it should."""
    flood_output = "import os\nblock = b'x' * 65536\nwhile True:\n    os.write(1, block)"
    code = FLOOD_STATUS if target == "status" else flood_output
    with Sandbox(SandboxConfig(timeout=3, preload=[])) as sandbox:
        assert_still_serving(sandbox)  # the launcher is up: its start is not counted
        cpu, wall = time.process_time(), time.monotonic()
        result = sandbox.run(code)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        assert wall >= 3.0 and result.status == "timeout", result
        assert cpu < 0.5, (cpu, wall)
        if target == "status":
            assert result.output == "1\n"  # it found the worker's status pipe, and wrote nothing else
        else:
            assert result.truncated and result.output.endswith(f"[output truncated: over {32 * 1024 ** 2} bytes]")
        assert_still_serving(sandbox)
