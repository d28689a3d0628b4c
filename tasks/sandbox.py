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
     read-only tmpfs root (over /sys, inside the private mount namespace only: the host gets no folder to
     clean up) holding only what a program needs: the interpreter, its standard library (its site-packages
     hidden), numpy at /packages, the folders of the shared libraries these load, and /dev/null (no project
     files, no other Python package, no cache, no home, no /proc, no /tmp); it chroots into it, and `setpriv`
     drops to a fresh random unprivileged uid, one per worker (as root; otherwise root of the worker's own user
     namespace), with an empty capability bounding set and no_new_privs. The worker (tasks/sandbox_worker.py,
     pid 1 there) installs a seccomp filter (no sockets but AF_UNIX, no IPC objects, no kernel keys, no new
     namespaces, no io_uring), imports numpy once, then forks one child per program from that pristine state,
     and after each program kills every other process of its namespace. The network namespace has only a
     loopback that is down. Per program: RLIMIT_AS (memory_mb), RLIMIT_CPU, RLIMIT_NPROC (4 processes/threads
     of the worker's own uid, the worker included, so every program may start the same 2 whatever the other
     workers run), no writable file system at all, prints to /dev/null, results capped at output_bytes, and
     a wall-clock limit per call that the worker enforces from outside (the child is killed 0.25 s past it).
  2. process (the slow twin, and the fallback where namespaces are unavailable): one fresh `python -I` per
     program with rlimits, the same seccomp filter where the machine allows it, an audit hook and an empty
     working folder; the parent kills the process group at the same deadlines. A guard against buggy programs,
     NOT a boundary: the hook lives in the program's own interpreter and can be got around.

What the isolated mode does NOT guarantee: memory is limited per process, so a program may hold up to 4 x
memory_mb for the length of its time limit; CPU time is not shared fairly with other work on the machine; the
kernel itself is the boundary (a kernel exploit escapes any namespace); the shared libraries, Python's standard
library and numpy are readable (they are public); the limit is per call, so a program that finds its later
inputs in its own memory and works on them in a thread of its own can spread its time across calls (never
beyond the sum of its calls' limits). POSIX only; isolation needs Linux on x86_64 or aarch64.
docs/sandbox.md lists each attack considered and what answers it.
"""
import atexit
import glob
import json
import os
import queue
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tasks.sandbox_worker import KILL_AFTER, read_lines

WORKER_CODE = (Path(__file__).parent / "sandbox_worker.py").read_text()
MODES = ("auto", "strict", "process")
MAX_PROCESSES = 4  # per isolated worker's uid: the worker, the program and 2 more processes or threads
PACKAGES = "/packages"  # numpy's place inside the sandbox: the one folder on sys.path besides the stdlib
# The sandbox's root is mounted over /sys inside each worker's private mount namespace: a folder every Linux
# has, that no file a program needs lies under, and that the host never sees change (nothing to clean up).
NEW_ROOT = "/sys"


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
        who = "a fresh uid per worker" if os.geteuid() == 0 else "root of a user namespace"
        return (f"sandbox: isolated workers ({len(pool.workers)} warm; namespaces pid, mount, net, ipc, uts; "
                f"seccomp; {who} without capabilities; read-only stdlib + numpy only)")
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
        self.layout = root_layout(os.path.realpath(tools["setpriv"]))
        self.uids_given: set[int] = set()
        self.workers: list[Worker] = []
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        atexit.register(self.close)
        self.grow(1)  # fails here, once, if namespaces do not work on this machine

    def start(self) -> "Worker":
        """A new worker under a uid of its own, never given before: RLIMIT_NPROC counts every process of a uid on
        the machine, so workers sharing one would spend each other's programs' allowance."""
        uid = fresh_uid(self.uids_given)
        self.uids_given.add(uid)
        return Worker(self.command(uid), uid)

    def command(self, uid: int) -> list[str]:
        """The host command of one worker that runs as `uid` (as root; otherwise as root of its user namespace)."""
        as_root = os.geteuid() == 0
        ns = [self.tools["unshare"], "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]
        ns += [] if as_root else ["--user", "--map-root-user"]
        drop = [os.path.realpath(self.tools["setpriv"]), "--bounding-set=-all", "--no-new-privs", "--pdeathsig=KILL"]
        drop += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if as_root else []
        boot = f"import sys\nsys.path.append({PACKAGES!r})\n{WORKER_CODE}\nserve()\n"
        python = [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", boot]  # -S: no site-packages
        return ns + ["/bin/sh", "-c", SETUP, "sandbox-setup", NEW_ROOT, *self.layout, "--", *drop, "--", *python]

    def grow(self, n: int) -> None:
        """Start workers (concurrently) until there are n."""
        new = [self.start() for _ in range(n - len(self.workers))]
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
            w = self.start()
            w.wait_ready()
            self.workers.append(w)
            return []
        finally:
            self.idle.put(w)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []


def fresh_uid(taken: set[int]) -> int:
    """A random uid far above any a system or a person is given, and not in `taken`."""
    draw = random.SystemRandom()
    while True:
        uid = draw.randrange(1 << 24, 1 << 30)
        if uid not in taken:
            return uid


# Runs as root of the new namespaces, before any program: build the read-only root and enter it.
# Arguments: ROOT then KIND SOURCE PLACE triples -- DROP... -- PYTHON...; KIND is dir, file or device (bound
# read-only at PLACE), link (a symlink at PLACE to SOURCE) or hide (an empty read-only folder over PLACE).
SETUP = r'''
set -eu
root=$1; shift
mount -t tmpfs -o size=1m,mode=755,nosuid,nodev sandbox "$root"
while [ "$1" != -- ]; do
  kind=$1 src=$2 dst=$root$3; shift 3
  case $kind in
    dir) mkdir -p "$dst" ;;
    file|device) mkdir -p "${dst%/*}"; : > "$dst" ;;
    link) mkdir -p "${dst%/*}"; ln -s "$src" "$dst"; continue ;;
    hide) mount -t tmpfs -o ro,size=4k,mode=555,nosuid,nodev,noexec hidden "$dst"; continue ;;
  esac
  mount --bind "$src" "$dst"
  if [ "$kind" = device ]; then opts=ro,nosuid; else opts=ro,nosuid,nodev; fi
  mount -o "remount,bind,$opts" "$dst"
done
shift
mount -o remount,bind,ro,nosuid,nodev "$root"
exec chroot "$root" "$@"
'''


def root_layout(setpriv: str) -> list[str]:
    """SETUP's triples: what a program needs, read-only, and nothing else.

    The interpreter file, its standard library with the package folders inside it hidden, this process's numpy
    at PACKAGES, setpriv, /dev/null, and the folders of the shared libraries that all of these load (as ldd
    finds them), reached by the same symlinks as on the host. Libraries inside Python's prefix (a shared
    libpython) come file by file, so that the prefix shows nothing else."""
    import numpy
    numpy_dir = os.path.dirname(os.path.realpath(numpy.__file__))
    numpy_dirs = [d for d in (numpy_dir, numpy_dir + ".libs") if os.path.isdir(d)]
    python = os.path.realpath(sys.executable)
    stdlib = os.path.realpath(sysconfig.get_path("stdlib"))
    prefix = os.path.realpath(sys.base_prefix)
    binaries = [python, setpriv, *glob.glob(os.path.join(stdlib, "lib-dynload", "*.so"))]
    binaries += [p for d in numpy_dirs for p in glob.glob(os.path.join(d, "**", "*.so*"), recursive=True)]
    files, dirs, links = [python, setpriv, os.path.realpath("/etc/ld.so.cache")], [stdlib], {}
    for lib in shared_libraries(binaries):
        real = os.path.realpath(lib)
        if inside(real, numpy_dirs):
            continue  # bound with numpy
        follow_links(lib, links)
        if inside(real, [prefix]):
            files.append(real)
        else:
            dirs.append(os.path.dirname(real))
    dirs = sorted(set(dirs))
    dirs = [d for d in dirs if not inside(d, [other for other in dirs if other != d])]
    files = [f for f in dict.fromkeys(files) if os.path.isfile(f) and not inside(f, dirs)]
    layout = [x for d in dirs for x in ("dir", d, d)] + [x for f in files for x in ("file", f, f)]
    layout += [x for d in numpy_dirs for x in ("dir", d, os.path.join(PACKAGES, os.path.basename(d)))]
    layout += ["device", "/dev/null", "/dev/null"]
    layout += [x for path, target in sorted(links.items()) if not inside(path, dirs) for x in ("link", target, path)]
    return layout + [x for path in package_folders([stdlib, *dirs]) for x in ("hide", "-", path)]


def package_folders(folders: list[str]) -> list[str]:
    """Python's site-packages and dist-packages folders inside these (the stdlib holds one, /usr/lib may)."""
    found = {p for folder in folders for pattern in ("*-packages", "python3*/*-packages")
             for p in glob.glob(os.path.join(folder, pattern)) if os.path.isdir(p) and not os.path.islink(p)}
    return sorted(found)


def shared_libraries(binaries: list[str]) -> list[str]:
    """Paths of the shared libraries the binaries load, the dynamic loader among them, as ldd prints them.

    ldd is a script that starts the loader twice per file; the loader's own --list once is three times faster
    (a second at each start on a busy machine), so ldd only names the loader, from the first binary."""
    def run(command):
        try:
            return subprocess.run(command, capture_output=True, text=True, env=child_env()).stdout
        except OSError as e:
            raise SandboxUnavailable(f"{command[0]} failed ({e}): apt-get install libc-bin") from None
    first = run(["ldd", binaries[0]])
    loader = re.search(r"^\s+(/\S+) \(0x", first, re.MULTILINE)  # the one line without "name =>"
    if loader is None:
        raise SandboxUnavailable(f"ldd names no dynamic loader for {binaries[0]}")
    rest = run(["/bin/sh", "-c", 'for f; do "$0" --list "$f"; done', loader.group(1), *binaries[1:]])
    return sorted(set(re.findall(r"(/\S+) \(0x[0-9a-f]+\)", first + rest)))


def inside(path: str, folders: list[str]) -> bool:
    return any(path.startswith(folder + "/") for folder in folders)


def follow_links(path: str, links: dict, depth: int = 0) -> str:
    """The real path of `path`; each symlink met on the way is added to `links` (its path: its target)."""
    if depth > 40:
        raise SandboxUnavailable(f"symlink loop at {path}")
    real = "/"
    for part in path.split("/"):
        if part in ("", "."):
            continue
        step = os.path.dirname(real) if part == ".." else os.path.join(real, part)
        if os.path.islink(step):
            links[step] = os.readlink(step)
            step = follow_links(os.path.join(real, links[step]), links, depth + 1)
        real = step
    return real


class WorkerBroken(Exception):
    pass


class Worker:
    """One isolated worker process tree: `unshare` on the host, the worker as pid 1 of its namespaces."""

    def __init__(self, command: list[str], uid: int):
        self.uid = uid  # its programs' uid as root; unused otherwise (they are root of the worker's user namespace)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env(), start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        if read_lines(self.proc.stdout.fileno(), 1, timeout, 0, 64) != [b"ready"]:
            self.kill()
            why = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise SandboxUnavailable(why[-1] if why else f"worker did not start (exit {self.proc.returncode})")

    def job(self, spec: str, n_inputs: int, limits: Limits) -> list[bytes]:
        per_line = limits.timeout + KILL_AFTER
        deadline = time.monotonic() + 10.0 + per_line * (n_inputs + 3)  # the worker's own deadlines come first
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
try:
    refuse_syscalls()  # where the machine allows it; before the hook, which forbids ctypes
except OSError:
    pass

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
        try:  # the in-child timer fires first; the deadline stops a program that blocks or swallows it
            lines = read_lines(proc.stdout.fileno(), n_inputs + 2, limits.startup_timeout,
                               limits.timeout + KILL_AFTER, limits.output_bytes + 64)
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
