"""Run untrusted, model-written Python functions and collect their results as JSON, isolated by the OS.

run_programs(sources, inputs) calls `transform(x)` (the entry name is configurable; `numpy_entry` names a
second entry that gets numpy arrays, e.g. BARC's `main`) of every source on every input and returns one list
of results per source; a result is the JSON value the call returned, or None when the program failed on that
input for any reason (syntax error, exception, time limit, memory limit, crash, junk that is not JSON, output
over the size cap, a refused operation). Only the inputs travel to the program; whatever it returns is data
that the caller validates (tasks/arc.py scores in the parent, against answers the program never sees).

Two ways to run, chosen by `sandbox` ("auto" picks the first that works, "strict" refuses the second):
  1. isolated (Linux): a pool of warm workers, each started by util-linux `unshare` in fresh pid, mount,
     network, IPC and UTS namespaces (plus a user namespace when not run as root). A small shell step mounts a
     read-only tmpfs root holding only the system's shared libraries, Python's own prefix, numpy and /dev/null
     (no project files, no cache, no home, no /proc, no /tmp), chroots into it, and `setpriv` drops to a fresh
     random unprivileged uid (as root; otherwise root of the user namespace) with an empty capability bounding
     set and no_new_privs. The worker (tasks/sandbox_worker.py, pid 1 there) imports numpy once, then forks one
     child per program from that pristine state, and after each program kills every other process of its
     namespace. The network namespace has only a loopback that is down. Per program: RLIMIT_AS (memory_mb),
     RLIMIT_CPU, RLIMIT_NPROC (4 processes/threads of the worker's uid, the worker included), no writable file
     system at all, prints to /dev/null, results capped at output_bytes, a wall-clock limit per call.
  2. process (the slow twin, and the fallback where namespaces are unavailable): one fresh `python -I` per
     program with rlimits, an audit hook and an empty working folder. A guard against buggy programs, NOT a
     boundary: the hook lives in the program's own interpreter and can be got around.

What the isolated mode does NOT guarantee: memory is limited per process, so a program may hold up to 4 x
memory_mb for the length of its time limit; CPU time is not shared fairly with other work on the machine; the
kernel itself is the boundary (a kernel exploit escapes any namespace); the shared libraries, Python's standard
library and numpy are readable (they are public); programs run in the same worker one after another, so
SysV IPC is switched off (its limits set to 0) rather than reset. POSIX only; isolation needs Linux.
"""
import atexit
import json
import os
import queue
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tasks.sandbox_worker import read_lines

WORKER_CODE = (Path(__file__).parent / "sandbox_worker.py").read_text()
MODES = ("auto", "strict", "process")
MAX_PROCESSES = 4  # per isolated worker uid: the worker, the program and 2 more processes or threads


class SandboxUnavailable(RuntimeError):
    """Isolation by namespaces cannot start here (and --sandbox strict was asked for, or it broke mid-run)."""


@dataclass
class Limits:
    """Per-program limits. `timeout` is wall-clock seconds for each call (the paper: 1 s per run)."""
    timeout: float = 1.0
    memory_mb: int = 1024  # address space of the child, numpy included (~150 MB of it)
    output_bytes: int = 1 << 20  # all results of one program together
    startup_timeout: float = 20.0  # interpreter + numpy import; generous because the machine may be busy


def run_programs(sources: list[str], inputs: list, timeout: float = 1.0, memory_mb: int = 1024,
                 workers: int | None = None, entry: str = "transform", output_bytes: int = 1 << 20,
                 numpy_entry: str | None = None, modules: dict[str, str] | None = None,
                 sandbox: str = "auto") -> list[list]:
    """Results of entry(x) for every source (rows) and input (columns); None where a call failed.

    Inputs must be JSON-serialisable; each call gets its own fresh copy (a numpy array for numpy_entry).
    modules: {name: source} of helper modules the programs may import."""
    for name in (entry, numpy_entry or "x"):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"entry must be a Python identifier, got {name!r}")
    if sandbox not in MODES:
        raise ValueError(f"sandbox must be one of {', '.join(MODES)}, got {sandbox!r}")
    payload = json.dumps(inputs)  # fails here, in the parent, on inputs that cannot travel
    limits = Limits(timeout=timeout, memory_mb=memory_mb, output_bytes=output_bytes)
    n = len(sources)
    if n == 0:
        return []
    cores = os.cpu_count() or 1
    # isolated workers mostly wait on pipes between programs: twice as many as cores keeps the cores busy
    workers = max(1, min(workers or (cores if sandbox == "process" else 2 * cores), n))
    pool = isolated_pool(sandbox, workers)
    extra = dict(entry=entry, numpy_entry=numpy_entry, modules=modules or {})

    def run(src):
        if not isinstance(src, str):
            return [None] * len(inputs)
        if pool is None:
            return run_one(src, payload, len(inputs), limits, **extra)
        spec = job_spec(src, payload, len(inputs), limits, MAX_PROCESSES, **extra)
        return decode_results(pool.run(spec, len(inputs), limits), len(inputs))
    with ThreadPoolExecutor(workers) as threads:
        return list(threads.map(run, sources))


def job_spec(source: str, inputs_json: str, n_inputs: int, limits: Limits, max_processes: int, *, entry: str,
             numpy_entry: str | None, modules: dict) -> str:
    """One job as one JSON line (the inputs, already JSON, are spliced in rather than parsed and re-encoded)."""
    cpu = int(limits.startup_timeout + limits.timeout * (n_inputs + 1)) + 1
    head = json.dumps({"source": source, "entry": entry, "numpy_entry": numpy_entry, "modules": modules,
                       "timeout": limits.timeout, "memory_bytes": limits.memory_mb << 20, "cpu_seconds": cpu,
                       "max_processes": max_processes, "output_bytes": limits.output_bytes})
    return head[:-1] + f', "inputs": {inputs_json}}}'


def decode_results(lines: list[bytes], n_inputs: int) -> list:
    """Results from the child's lines: ['ready', 'defined', one JSON value per input]; missing ones are None."""
    results = [None] * n_inputs
    if lines[:2] != [b"ready", b"defined"]:
        return results
    for i, line in enumerate(lines[2:2 + n_inputs]):
        try:
            results[i] = json.loads(line)
        except (ValueError, RecursionError):  # junk, or nesting deep enough to overflow the decoder
            results[i] = None
    return results


# -- isolated workers ---------------------------------------------------------------------------------------

_pool = None  # the process's one WorkerPool, started on first use
_failure: str | None = None  # why isolation could not start here
_lock = threading.Lock()


def isolation(mode: str = "auto", workers: int = 1) -> str:
    """Start the isolated pool if needed and say in one line which isolation is in force; with mode "strict",
    raise SandboxUnavailable where namespaces are unavailable. Printed once per process on stderr."""
    return describe(isolated_pool(mode, workers), mode)


def describe(pool, mode: str) -> str:
    if pool is not None:
        who = f"uid {pool.uid}" if os.geteuid() == 0 else "root of a user namespace"
        return (f"sandbox: isolated workers ({len(pool.workers)} warm; namespaces pid, mount, net, ipc, uts; "
                f"{who} without capabilities; read-only python + numpy only)")
    if mode == "process":
        return "sandbox: one process per program with an audit hook (asked for; not a security boundary)"
    return (f"sandbox: WARNING: Linux namespaces unavailable ({_failure}); programs run in processes with an "
            "audit hook, which is not a security boundary (--sandbox strict refuses to run instead)")


def isolated_pool(mode: str, workers: int):
    """The warm pool grown to `workers`, or None for the process path (asked for, or the fallback)."""
    global _pool, _failure
    if mode == "process":
        return None
    with _lock:
        first = _pool is None and _failure is None
        if first:
            try:
                _pool = WorkerPool()
            except SandboxUnavailable as e:
                _failure = str(e)
        if _failure is not None and mode == "strict":
            raise SandboxUnavailable(f"--sandbox strict: Linux namespaces unavailable ({_failure})")
        if _pool is not None:
            _pool.grow(workers)
        if first:
            print(describe(_pool, mode), file=sys.stderr)
        return _pool


class WorkerPool:
    """Warm isolated workers; each serves one job at a time and is replaced when it breaks."""

    def __init__(self):
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailable(f"not Linux ({sys.platform})")
        tools = {name: shutil.which(name, path=os.defpath + ":/usr/sbin:/sbin") for name in ("unshare", "setpriv")}
        if not all(tools.values()):
            raise SandboxUnavailable("unshare/setpriv not found: apt-get install util-linux")
        self.tools = tools
        self.uid = random.SystemRandom().randrange(1 << 24, 1 << 30)  # unused by anyone: RLIMIT_NPROC is ours
        self.root = tempfile.mkdtemp(prefix="sandbox-root-")  # stays empty on the host: mounts are private
        self.workers: list[Worker] = []
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        atexit.register(self.close)
        self.grow(1)  # fails here, once, if namespaces do not work on this machine

    def command(self) -> list[str]:
        as_root = os.geteuid() == 0
        ns = [self.tools["unshare"], "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]
        ns += [] if as_root else ["--user", "--map-root-user"]
        drop = [os.path.realpath(self.tools["setpriv"]), "--bounding-set=-all", "--no-new-privs", "--pdeathsig=KILL"]
        drop += [f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"] if as_root else []
        import numpy
        numpy_dir = os.path.dirname(os.path.realpath(numpy.__file__))
        boot = f"import sys\nsys.path.append({os.path.dirname(numpy_dir)!r})\n{WORKER_CODE}\nserve()\n"
        python = [os.path.realpath(sys.executable), "-I", "-B", "-c", boot]
        return ns + ["/bin/sh", "-c", SETUP, "sandbox-setup", self.root, *visible_paths(numpy_dir, drop[0]),
                     "--", *drop, "--", *python]

    def grow(self, n: int) -> None:
        """Start workers (concurrently) until there are n."""
        new = [Worker(self.command()) for _ in range(n - len(self.workers))]
        for w in new:
            w.wait_ready()
            self.workers.append(w)
            self.idle.put(w)

    def run(self, spec: str, n_inputs: int, limits: Limits) -> list[bytes]:
        """The lines one job wrote; a worker that breaks (it should not) is replaced and the job gets nothing."""
        w = self.idle.get()
        try:
            return w.job(spec, n_inputs, limits)
        except WorkerBroken:
            w.kill()
            self.workers.remove(w)
            w = Worker(self.command())
            w.wait_ready()
            self.workers.append(w)
            return []
        finally:
            self.idle.put(w)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []
        try:
            os.rmdir(self.root)
        except OSError:
            pass


# Runs as root of the new namespaces, before any program: build the read-only root and enter it.
# Arguments: ROOT PATH... -- DROP... -- PYTHON...; a PATH that is a symlink is recreated as one.
SETUP = r'''
set -eu
root=$1; shift
mount -t tmpfs -o size=1m,mode=755,nosuid,nodev sandbox "$root"
while [ "$1" != -- ]; do
  src=$1; shift
  if [ -L "$src" ]; then mkdir -p "$root${src%/*}"; ln -s "$(readlink "$src")" "$root$src"; continue; fi
  if [ -d "$src" ]; then mkdir -p "$root$src"; else mkdir -p "$root${src%/*}"; : > "$root$src"; fi
  mount --bind "$src" "$root$src"
  if [ "$src" = /dev/null ]; then opts=ro,nosuid; else opts=ro,nosuid,nodev; fi
  mount -o "remount,bind,$opts" "$root$src"
done
shift
echo 0 > /proc/sys/kernel/shmmni 2>/dev/null || true  # SysV IPC off: it would outlive a program
echo 0 > /proc/sys/kernel/msgmni 2>/dev/null || true
echo "0 0 0 0" > /proc/sys/kernel/sem 2>/dev/null || true
mount -o remount,ro "$root"
exec chroot "$root" "$@"
'''


def visible_paths(numpy_dir: str, setpriv: str) -> list[str]:
    """What a program can see (read-only): shared libraries, Python's prefix, numpy, setpriv, /dev/null."""
    wanted = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache", "/dev/null",
              os.path.realpath(sys.base_prefix), numpy_dir, numpy_dir + ".libs", setpriv]
    wanted = [p for p in dict.fromkeys(wanted) if os.path.lexists(p)]
    dirs = [p for p in wanted if os.path.isdir(p) and not os.path.islink(p)]
    # a path inside another bound folder is already there (and that folder is read-only by then)
    return [p for p in wanted if not any(p != d and p.startswith(d + "/") for d in dirs)]


class WorkerBroken(Exception):
    pass


class Worker:
    """One isolated worker process tree: `unshare` on the host, the worker as pid 1 of its namespaces."""

    def __init__(self, command: list[str]):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env(), start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        if read_lines(self.proc.stdout.fileno(), 1, timeout, 0, 64) != [b"ready"]:
            self.kill()
            why = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise SandboxUnavailable(why[-1] if why else f"worker did not start (exit {self.proc.returncode})")

    def job(self, spec: str, n_inputs: int, limits: Limits) -> list[bytes]:
        grace = 1.0 + 2 * limits.timeout
        deadline = time.monotonic() + 10.0 + grace * (n_inputs + 3)  # the worker's own deadlines come first
        try:
            self.proc.stdin.write(spec.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise WorkerBroken from None
        blob = read_reply(self.proc.stdout.fileno(), deadline, limits.output_bytes + 64)
        return blob.split(b"\n") if blob else []

    def kill(self) -> None:
        """SIGKILL to `unshare`, whose --kill-child takes the worker, and the kernel the rest of its namespace."""
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()


def read_reply(fd: int, deadline: float, cap: int) -> bytes:
    """A worker's answer: "<n>\\n" then n bytes (n <= cap), before the deadline."""
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            head, newline, rest = buf.partition(b"\n")
            if newline:
                if not head.isdigit() or int(head) > cap:
                    raise WorkerBroken
                if len(rest) >= int(head):
                    return rest[:int(head)]
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise WorkerBroken
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerBroken
            buf += chunk


# -- the process path (slow twin and fallback) --------------------------------------------------------------

# The child's code: the worker module's functions, then an audit hook and one job. Kept as a plain string
# so the child never imports anything from the project.
RUNNER = WORKER_CODE + r'''
spec = json.loads(sys.stdin.read())
sys.stdin.close()
out = os.fdopen(os.dup(1), "w", buffering=1)  # private result channel: the original stdout pipe
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1); os.dup2(null, 2)  # program prints (Python or C) go nowhere
set_limits(spec)

home = os.path.realpath(os.getcwd()) + os.sep
lib_dirs = [p for p in sys.path if p and os.path.isdir(p)]
lib_roots = tuple({f(p) + os.sep for p in lib_dirs for f in (os.path.abspath, os.path.realpath)})
BLOCKED = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.",
           "pty.", "socket.", "ctypes.", "os.kill", "os.killpg", "resource.setrlimit", "resource.prlimit",
           "os.symlink", "os.link", "os.chdir", "os.chroot", "winreg.", "webbrowser.")
LOOK_EVENTS = ("os.listdir", "os.scandir", "os.walk", "glob.glob")  # imports list library folders
CHANGE_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                 "os.utime", "shutil.", "os.mkfifo", "os.mknod")

def inside(path, roots):
    if isinstance(path, int):
        return True  # an fd that is already open
    p = os.path.abspath(os.fsdecode(path)) + os.sep
    return p.startswith(roots)

def hook(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "open":
        path, mode = args[0], args[1]
        write = mode is not None and any(c in str(mode) for c in "wax+")
        if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            write = True
        if path is not None and not (inside(path, (home,)) or (not write and inside(path, lib_roots))):
            raise PermissionError("sandbox: open outside the working folder")
    elif event.startswith(LOOK_EVENTS) or event.startswith(CHANGE_EVENTS):
        roots = (home,) + lib_roots if event.startswith(LOOK_EVENTS) else (home,)
        for a in args:
            if isinstance(a, (str, bytes, os.PathLike)) and not inside(a, roots):
                raise PermissionError("sandbox: " + event + " outside the working folder")

sys.addaudithook(hook)
run_job(spec, out)
os._exit(0)  # skip the program's atexit handlers and any threads it left running
'''


def run_one(source: str, inputs_json: str, n_inputs: int, limits: Limits, **extra) -> list:
    """One program in one fresh process; see the module docstring."""
    spec = job_spec(source, inputs_json, n_inputs, limits, 0, **extra)  # 0 processes: ignored by root
    with tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as home:
        spec_path = os.path.join(home, ".spec.json")
        with open(spec_path, "w") as f:
            f.write(spec)
        with open(spec_path, "rb") as spec_file:
            os.unlink(spec_path)  # the program cannot read it back; the child has it open as stdin
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", RUNNER], cwd=home, env=child_env(),
                                    stdin=spec_file, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    start_new_session=True)  # own process group: killed as a whole
        try:
            grace = 1.0 + 2 * limits.timeout  # the in-child timer fires first; this catches one that ignores it
            lines = read_lines(proc.stdout.fileno(), n_inputs + 2, limits.startup_timeout, grace,
                               limits.output_bytes + 64)
        finally:
            kill_group(proc)
    return decode_results(lines, n_inputs)


def child_env() -> dict:
    """A minimal environment: one BLAS thread (the parent runs many children at once), no inherited secrets."""
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if "LD_LIBRARY_PATH" in os.environ:  # some Python builds need it to start at all
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.stdout.close()
    proc.wait()
