"""Programs written as a policy rewarded for a higher ARC score would write them, against the isolated sandbox.

Every attack is one program scored by the real ArcTask on ARC task 66e6c45b, where returning the input
unchanged scores 0.5 (half the cells). Each must score 0, or at most the identity's 0.5 where the attack is
harmless and the program then returns its input; and nothing may leak out: the parent stays alive with clean
output, no file appears outside, no process outlives its program. All attacks run as one batch (shared by the
tests below) so the file stays fast; a few attacks that return what they saw use run_programs directly: other
socket families, IPC objects and kernel keys that could reach the next program, new namespaces, what a
program can see, the same process allowance beside other workers, and a run killed with SIGKILL.
docs/sandbox.md maps each attack to what answers it.
"""
import errno
import json
import os
import site
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy
import pytest

import assets
import tasks.sandbox as sandbox
from tasks.arc import ArcTask, pair_score
from tasks.sandbox import isolation, run_programs

if not sys.platform.startswith("linux") or isolation("auto").startswith("sandbox: WARNING"):
    pytest.skip("Linux namespaces unavailable here: the attacks target the isolated sandbox",
                allow_module_level=True)

TASK = "66e6c45b"
IDENTITY_SCORE = 0.5
ARC_FILE = str(assets.asset_path(assets.ARC1_JSON))
RET = "\n    return grid"  # programs that survive their attack return the input unchanged

ATTACKS = {
    # the headline: rewrite the audit hook's globals, then read the stored answers (1.0 if it worked)
    "hook_globals_then_arc_data": (
        "import json, sys\n"
        "def transform(grid):\n"
        "    main = sys.modules.get('__main__')\n"
        "    for name, value in (('inside', lambda *a: True), ('BLOCKED', ())):\n"
        "        if main is not None and hasattr(main, name):\n"
        "            setattr(main, name, value)\n"
        "    data = json.load(open({arc!r}))\n"
        "    for split in data.values():\n"
        "        for task in split.values():\n"
        "            for pair in task['train'] + task['test']:\n"
        "                if pair['input'] == grid:\n"
        "                    return pair['output']"),
    "read_any_cache_file": (
        "import os\n"
        "def transform(grid):\n"
        "    for root, dirs, files in os.walk({cache!r}):\n"
        "        for f in files:\n"
        "            if f.endswith('.json'):\n"
        "                return open(os.path.join(root, f)).read(10)\n"
        "    raise FileNotFoundError"),
    "fork_exec_shell": (  # subprocess.Popen is _posixsubprocess.fork_exec underneath
        "import subprocess\n"
        "def transform(grid):\n"
        "    subprocess.Popen(['/bin/sh', '-c', 'sleep 1; touch {marker}'])" + RET),
    "fork_setsid_outlive": (
        "import os, time\n"
        "def transform(grid):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        time.sleep(1.5)\n"
        "        open({marker!r}, 'w').write('alive')\n"
        "        os._exit(0)" + RET),
    "write_parent_stdout": (
        "import os\n"
        "def transform(grid):\n"
        "    for path in ('/proc/%d/fd/1' % os.getppid(), '/proc/1/fd/1', '/dev/stdout', '/dev/tty'):\n"
        "        try:\n"
        "            open(path, 'w').write('PWNED')\n"
        "        except OSError:\n"
        "            pass\n"
        "    for fd in range(64):\n"
        "        try:\n"
        "            os.write(fd, b'PWNED')\n"
        "        except OSError:\n"
        "            pass" + RET),
    "signal_parent_and_all": (
        "import os, signal\n"
        "def transform(grid):\n"
        "    for pid in (os.getppid(), 1, -1):\n"
        "        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):\n"
        "            try:\n"
        "                os.kill(pid, sig)\n"
        "            except OSError:\n"
        "                pass" + RET),
    "fork_bomb": (
        "import os\n"
        "def transform(grid):\n"
        "    while True:\n"
        "        try:\n"
        "            os.fork()\n"
        "        except OSError:\n"
        "            pass"),
    "thread_bomb": (
        "import threading, time\n"
        "def transform(grid):\n"
        "    while True:\n"
        "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()"),
    "socket_to_parent": (
        "import socket\n"
        "def transform(grid):\n"
        "    socket.create_connection(('127.0.0.1', {port}), timeout=0.5).sendall(b'PWNED')" + RET),
    "ctypes_segfault": "import ctypes\ndef transform(grid):\n    return ctypes.string_at(0)",
    "recursion": "def transform(grid):\n    return transform(grid)",
    "deep_recursion_limit": ("import sys\nsys.setrecursionlimit(10**9)\n"
                             "def f(n):\n    return f(n + 1)\ndef transform(grid):\n    return f(0)"),
    "alloc_8gb": "def transform(grid):\n    x = bytearray(8 << 30)" + RET,
    "alloc_8gb_numpy": "import numpy as np\ndef transform(grid):\n    x = np.ones(1 << 30)" + RET,
    "busy_loop": "def transform(grid):\n    while True:\n        pass",
    "stubborn_busy_loop": ("def transform(grid):\n    while True:\n        try:\n            while True:\n"
                           "                pass\n        except BaseException:\n            pass"),
    "sleep_in_definition": "import time\ntime.sleep(30)\ndef transform(grid):\n    return grid",
    # calls over the limit whose own timer never fires: only the worker's deadline stops them
    "slow_calls_alarm_blocked": ("import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\n"
                                 "def transform(grid):\n    time.sleep(1.6)" + RET),
    "slow_calls_alarm_ignored": ("import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                 "def transform(grid):\n    time.sleep(1.6)" + RET),
    "billion_char_print": "def transform(grid):\n    print('x' * 10**9)" + RET,
    "print_in_chunks": "import sys\ndef transform(grid):\n    for _ in range(300):\n        print('x' * 10**6)" + RET,
    "sys_exit": "import sys\ndef transform(grid):\n    sys.exit(0)",
    "builtins_tampering": (
        "import builtins\n"
        "def transform(grid):\n"
        "    builtins.isinstance = lambda *a: True\n"
        "    builtins.len = lambda x: 0\n"
        "    builtins.type = lambda x: int\n"
        "    return [[True] * 99] * 99"),
    "json_tampering": (
        "import json\n"
        "def transform(grid):\n"
        "    json.dumps = lambda *a, **k: '[[1, 2], [3, \"x\"]]'\n"
        "    json.loads = lambda *a, **k: 1.0\n"
        "    return 1.0"),
    "numpy_tampering": (
        "import numpy as np\n"
        "def transform(grid):\n"
        "    np.array = lambda *a, **k: None\n"
        "    np.ndarray.__eq__ = lambda a, b: True\n"
        "    return np.zeros((30, 30), dtype=int)"),
    "always_equal_subclass": (
        "import numpy as np\n"
        "class Same(np.ndarray):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    def __ne__(self, other):\n"
        "        return False\n"
        "def transform(grid):\n"
        "    return np.zeros((len(grid), len(grid[0])), dtype=int).view(Same)"),
    "always_equal_list": (
        "class Same(list):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "class Cell(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def transform(grid):\n"
        "    return Same(Same(Cell(0) for _ in row) for row in grid)"),
    "huge_nested_list": ("def transform(grid):\n    x = []\n    for _ in range(10**6):\n        x = [x]\n"
                         "    return x"),
    "huge_wide_list": "def transform(grid):\n    return [[1] * 10**4] * 10**4",
    "forged_deep_json_line": (  # writes its own result lines, nested too deep for a recursive decoder
        "import os\n"
        "def transform(grid):\n"
        "    line = b'ready\\ndefined\\n' + b'[' * 400000 + b']' * 400000 + b'\\n'\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)"),
    "write_anywhere": (
        "import os\n"
        "def transform(grid):\n"
        "    for path in ({marker!r}, '/tmp/x', '/x', './x', '/dev/shm/x'):\n"
        "        try:\n"
        "            open(path, 'w').write('x')\n"
        "        except OSError:\n"
        "            pass" + RET),
    "sysv_shared_memory": (
        "import ctypes\n"
        "def transform(grid):\n"
        "    if ctypes.CDLL(None).shmget(0, 4096, 0o1600) == -1:\n"
        "        raise OSError('no SysV IPC')" + RET),
    "own_namespaces_then_mount_proc": (
        "import ctypes, os\n"
        "def transform(grid):\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    libc.unshare(0x10000000 | 0x00020000)  # a user and a mount namespace of its own: allowed\n"
        "    if libc.mount(b'proc', b'/dev', b'proc', 0, None) != 0 and not os.path.exists({arc!r}):\n"
        "        raise OSError('still nothing to see')" + RET),
    "poison_later_programs": (  # later programs fork from the worker's pristine copy, not from this one
        "import numpy, common, json\n"
        "numpy.array = None\n"
        "common.crop = None\n"
        "json.dumps = None\n"
        "def transform(grid):\n"
        "    return None"),
    "barc_after_poison": ("from common import *\nimport numpy as np\n"
                          "def main(input_grid):\n    return np.array(input_grid)"),
}


def worker_uids(pool) -> set[int]:
    return {w.uid for w in pool.workers}


def parent_processes_of(uid: int) -> list[int]:
    """Pids of the host's processes running as `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                pids.append(int(entry))
        except FileNotFoundError:
            pass
    return pids


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Scores of every attack, plus what the host saw while they ran."""
    task = ArcTask(TASK, workers=2, sandbox="strict")  # the isolated pool starts here, before the capture
    outside = tmp_path_factory.mktemp("outside")
    marker = outside / "pwned"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    fmt = dict(arc=ARC_FILE, cache=str(assets.cache_dir()), marker=str(marker), port=listener.getsockname()[1])
    sources = [src.format(**fmt) for src in ATTACKS.values()]
    pool = sandbox._pool
    workers_before = sorted(w.proc.pid for w in pool.workers)
    tmp_before = set(os.listdir(tempfile.gettempdir()))

    captured = tempfile.TemporaryFile()
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(captured.fileno(), 1), os.dup2(captured.fileno(), 2)
    try:
        start = time.monotonic()
        scores = dict(zip(ATTACKS, task.score(sources)))
        seconds = time.monotonic() - start
        time.sleep(2.0)  # past the setsid child's and the shell's delayed writes, had they survived
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    captured.seek(0)
    try:
        connection = listener.accept()
    except BlockingIOError:
        connection = None
    return dict(scores=scores, seconds=seconds, output=captured.read(), marker=marker, connection=connection,
                pool=pool, workers_before=workers_before, tmp_new=set(os.listdir(tempfile.gettempdir())) - tmp_before,
                task=task)


def test_the_identity_score_is_what_the_attacks_are_held_to(attacked):
    assert attacked["task"].score(["def transform(grid):\n    return grid"]) == [IDENTITY_SCORE]


@pytest.mark.parametrize("name", [n for n in ATTACKS if n not in ("barc_after_poison", "always_equal_subclass",
                                                                  "always_equal_list")])  # these: tests below
def test_attack_gains_nothing(attacked, name):
    # between the two when a busy machine lets only the first calls of a slow attack finish in time
    assert 0.0 <= attacked["scores"][name] <= IDENTITY_SCORE, attacked["scores"][name]


@pytest.mark.parametrize("name", ["hook_globals_then_arc_data", "read_any_cache_file", "fork_bomb", "thread_bomb",
                                  "ctypes_segfault", "recursion", "alloc_8gb", "busy_loop", "stubborn_busy_loop",
                                  "sleep_in_definition", "slow_calls_alarm_blocked",
                                  "slow_calls_alarm_ignored", "billion_char_print", "sys_exit", "builtins_tampering",
                                  "json_tampering", "huge_nested_list", "huge_wide_list", "forged_deep_json_line",
                                  "sysv_shared_memory", "own_namespaces_then_mount_proc", "poison_later_programs"])
def test_attack_scores_zero(attacked, name):
    assert attacked["scores"][name] == 0.0


def test_always_equal_objects_score_as_the_plain_values_they_hold(attacked):
    task = attacked["task"]
    zeros = [[[0] * len(p["input"][0]) for _ in p["input"]] for p in task.train]  # what both programs hold
    expected = sum(pair_score(z, p["output"]) for z, p in zip(zeros, task.train)) / len(task.train)
    assert expected < 1.0
    assert attacked["scores"]["always_equal_subclass"] == pytest.approx(expected)
    assert attacked["scores"]["always_equal_list"] == pytest.approx(expected)


def test_a_poisoned_program_does_not_reach_later_programs(attacked):
    assert attacked["scores"]["barc_after_poison"] == IDENTITY_SCORE  # numpy main still runs, via common


def test_host_stays_clean(attacked):
    assert attacked["output"] == b""  # nothing reached the parent's stdout or stderr
    assert not attacked["marker"].exists()  # no file outside (shell, setsid child, direct writes)
    assert attacked["connection"] is None  # no connection to the parent's port on 127.0.0.1
    # nothing new in the host's temporary folder from the programs (other work on the machine may add files)
    tmp = tempfile.gettempdir()
    assert "x" not in attacked["tmp_new"]
    uids = worker_uids(attacked["pool"])
    assert not [n for n in attacked["tmp_new"] if os.lstat(os.path.join(tmp, n)).st_uid in uids]


def test_no_process_outlives_its_program_and_the_workers_survive(attacked):
    pool = attacked["pool"]
    assert sorted(w.proc.pid for w in pool.workers) == attacked["workers_before"]  # none died or was replaced
    if os.geteuid() == 0:  # each worker's uid is its own: only the worker itself (pid 1 there) remains of each
        assert [len(parent_processes_of(uid)) for uid in worker_uids(pool)] == [1] * len(pool.workers)


def test_the_batch_takes_seconds_not_minutes(attacked):
    # 33 programs on 2 workers, a handful of them held to the 1 s call limit
    assert attacked["seconds"] < 30


def test_what_a_program_can_see():
    src = ("import os\ndef transform(g):\n    return [sorted(os.listdir('/')), sorted(os.environ), os.getuid(),"
           " os.path.exists('/proc/1'), os.path.exists({cache!r}), os.path.exists('/etc/passwd'),"
           " os.path.exists({project!r})]")
    os.environ["MIGRATE_TEST_SECRET"] = "s3cret"
    try:
        project = os.path.abspath(sandbox.__file__)  # this checkout's code (its venv may be bound beside it)
        [[seen]] = run_programs([src.format(cache=str(assets.cache_dir()), project=project)], [0], sandbox="strict")
    finally:
        del os.environ["MIGRATE_TEST_SECRET"]
    top, env, uid, proc, cache, passwd, code = seen
    assert code is False
    # a folder named here may show only as the way down to what is bound (an interpreter under /tmp, say)
    places = sandbox._pool.layout[2::3]
    ways_down = {p.split("/")[1] for p in places}
    assert not ({"proc", "tmp", "home", "sys", "var", "run"} - ways_down) & set(top)
    assert "MIGRATE_TEST_SECRET" not in env and "HOME" not in env
    assert (proc, cache, passwd) == (False, False, False)
    if os.geteuid() == 0:
        assert uid in worker_uids(sandbox._pool) and uid != 0
    assert json.dumps(seen)  # plain data came back


# -- what reaches past a program: other socket families, IPC, keys, namespaces; what it sees; a killed run ------

SYSCALL_NUMBERS = {  # from the kernel's tables
    "x86_64": dict(add_key=248, keyctl=250, io_uring_setup=425, perf_event_open=298, userfaultfd=323),
    "aarch64": dict(add_key=217, keyctl=219, io_uring_setup=425, perf_event_open=241, userfaultfd=282)}
machine = os.uname().machine
known_machine = pytest.mark.skipif(machine not in SYSCALL_NUMBERS, reason=f"no syscall numbers for {machine}")


def run_in_one_worker(sources: list[str], inputs: list) -> list[list]:
    """Results of the programs, one after another in the same isolated worker (run_programs may use several)."""
    pool = sandbox._pool
    limits = sandbox.Limits()
    worker = pool.idle.get()
    try:
        return [sandbox.decode_results(worker.job(sandbox.job_spec(
            src, json.dumps(inputs), len(inputs), limits, sandbox.MAX_PROCESSES, entry="transform",
            numpy_entry=None, modules={}), len(inputs), limits), len(inputs)) for src in sources]
    finally:
        pool.idle.put(worker)


def test_sockets_of_other_families_cannot_be_made():
    """Creating the socket must fail; nothing here connects, binds or listens."""
    families = [[socket.AF_INET, socket.SOCK_STREAM], [socket.AF_INET6, socket.SOCK_DGRAM],
                [16, socket.SOCK_DGRAM], [17, socket.SOCK_DGRAM], [40, socket.SOCK_STREAM]]  # netlink, packet, vsock
    src = ("import socket\ndef transform(families):\n    made = []\n    for family, kind in families:\n"
           "        try:\n            socket.socket(family, kind).close()\n            made.append('made')\n"
           "        except OSError as e:\n            made.append(e.errno)\n"
           "    a, b = socket.socketpair()\n    return made + [a.family == socket.AF_UNIX]")
    [[made]] = run_programs([src], [families], sandbox="strict")
    assert made == [errno.EAFNOSUPPORT] * len(families) + [True]  # AF_UNIX pairs (private to the process) stay


@pytest.mark.skipif(machine != "x86_64", reason="the x32 numbering exists on x86_64 only")
def test_the_x32_numbering_does_not_get_around_the_filter():
    src = ("import ctypes\ndef transform(g):\n"
           "    return ctypes.CDLL(None).syscall(0x40000000 | 41, 40, 1, 0)")  # socket(AF_VSOCK) by x32 number
    assert run_programs([src], [0], sandbox="strict") == [[None]]  # the program is killed, whatever its kernel


@known_machine
def test_queues_keys_and_shared_memory_neither_outlive_a_program_nor_stay_in_the_kernel():
    nr = SYSCALL_NUMBERS[machine]
    head = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.syscall.restype = ctypes.c_long\n")
    make = head + ("def transform(g):\n    return [\n"
                   "        libc.mq_open(b'/sandbox-probe', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0,\n"
                   f"        libc.syscall({nr['add_key']}, b'user', b'sandbox-probe', b'x', 1, -4) >= 0,\n"
                   "        libc.shmget(0x5eed, 4096, 0o1600) >= 0]")  # -4: the user keyring; 0o1000 IPC_CREAT
    find = head + ("def transform(g):\n    return [\n"
                   "        libc.mq_open(b'/sandbox-probe', os.O_RDONLY) >= 0,\n"
                   f"        libc.syscall({nr['keyctl']}, 10, -4, b'user', b'sandbox-probe', 0) >= 0,\n"
                   "        libc.shmget(0x5eed, 0, 0) >= 0]")  # 10: KEYCTL_SEARCH
    made, found = run_in_one_worker([make, find], [0])
    assert found == [[False, False, False]]  # nothing the first program made reached the next one
    assert made == [[False, False, False]]  # refused outright: there is nothing to clean up after it
    with open("/proc/key-users") as f:  # the kernel holds no key of a worker's uid (of root's user ns if not root)
        owners = {int(line.split(":")[0]) for line in f}
    assert not worker_uids(sandbox._pool) & owners or os.geteuid() != 0


@known_machine
def test_new_namespaces_io_uring_and_perf_events_are_refused_and_threads_still_run():
    nr = SYSCALL_NUMBERS.get(machine, {})
    calls = ["libc.unshare(0x10000000 | 0x08000000)",  # CLONE_NEWUSER | CLONE_NEWIPC, before any thread
             f"libc.syscall({nr['io_uring_setup']}, 1, ctypes.create_string_buffer(120))",
             f"libc.syscall({nr['perf_event_open']}, ctypes.create_string_buffer(128), 0, -1, -1, 0)",
             f"libc.syscall({nr['userfaultfd']}, 1)"]  # UFFD_USER_MODE_ONLY
    src = ("import ctypes, threading\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "def transform(g):\n    box = []\n"
           "    refused = [" + ", ".join(f"{call} == -1 and ctypes.get_errno()" for call in calls) + "]\n"
           "    t = threading.Thread(target=box.append, args=(7,))\n    t.start()\n    t.join()\n"
           "    return box + refused")
    assert run_programs([src], [0], sandbox="strict") == [[[7] + [errno.EPERM] * len(calls)]]


def test_every_program_may_start_the_same_threads_however_many_workers_run_beside_it():
    """RLIMIT_NPROC counts every process of a uid on the machine: were the workers to share one, the other warm
    workers and their programs would use up a program's allowance, and a program would behave differently by
    the pool's size. A pool of its own, as many workers as the allowance, every worker running the program."""
    src = ("import threading\ndef transform(g):\n    started, stop = 0, threading.Event()\n    try:\n"
           "        while started < 10:\n            threading.Thread(target=stop.wait).start()\n"
           "            started += 1\n    except RuntimeError:\n        pass\n    stop.set()\n    return started")
    limits = sandbox.Limits()
    spec = sandbox.job_spec(src, "[0]", 1, limits, sandbox.MAX_PROCESSES, entry="transform", numpy_entry=None,
                            modules={})
    pool = sandbox.WorkerPool()
    try:
        pool.grow(sandbox.MAX_PROCESSES)
        with ThreadPoolExecutor(sandbox.MAX_PROCESSES) as threads:
            lines = list(threads.map(lambda _: pool.run(spec, 1, limits), range(sandbox.MAX_PROCESSES)))
        uids = worker_uids(pool)
    finally:
        pool.close()
    assert [sandbox.decode_results(out, 1) for out in lines] == [[sandbox.MAX_PROCESSES - 2]] * sandbox.MAX_PROCESSES
    assert len(uids) == sandbox.MAX_PROCESSES


def test_programs_see_the_stdlib_and_the_hosts_numpy_and_no_other_python_package():
    base = os.path.realpath(sys.base_prefix)
    site_dirs = site.getsitepackages([sys.base_prefix]) + ["/usr/lib/python3/dist-packages"]
    src = ("import os, sys, numpy\ndef transform(paths):\n"
           "    look = lambda p: sorted(os.listdir(p)) if os.path.isdir(p) else None\n"
           "    st = os.stat(numpy.__file__)\n"
           "    return [[st.st_dev, st.st_ino], look(paths[0]), look(paths[0] + '/bin'), [look(p) for p in paths[1:]]]")
    [[seen]] = run_programs([src], [[base, *site_dirs]], sandbox="strict")
    numpy_file, top, bin_dir, packages = seen
    host = os.stat(numpy.__file__)
    assert numpy_file == [host.st_dev, host.st_ino]  # the very numpy this process imported (a bind keeps inodes)
    assert set(top) <= {"bin", "lib"} and bin_dir == [os.path.basename(os.path.realpath(sys.executable))]
    assert all(p in (None, []) for p in packages), packages  # no site-packages or dist-packages to import from


def test_a_killed_run_leaves_nothing_behind(tmp_path):
    """SIGKILL gives no chance to clean up: nothing may need it (no folder in TMPDIR, no worker left running)."""
    code = ("import sys\nimport tasks.sandbox as s\ns.isolation('strict', 2)\n"
            "print(*[w.uid for w in s._pool.workers], flush=True)\nsys.stdin.read()")
    project = os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__)))
    run = subprocess.Popen([sys.executable, "-c", code], cwd=project, env=dict(os.environ, TMPDIR=str(tmp_path)),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    uids = [int(uid) for uid in run.stdout.readline().split()]
    run.kill()
    run.wait()
    assert len(set(uids)) == 2
    left = lambda: [pid for uid in uids for pid in parent_processes_of(uid)]
    deadline = time.monotonic() + 10
    while os.geteuid() == 0 and left() and time.monotonic() < deadline:
        time.sleep(0.05)  # the workers see their input close and end with their namespaces
    assert os.geteuid() != 0 or left() == []
    assert os.listdir(tmp_path) == []
