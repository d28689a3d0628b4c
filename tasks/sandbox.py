"""Run untrusted, model-written Python functions in throw-away processes and collect their results as JSON.

run_programs(sources, inputs) calls `transform(x)` (the entry name is configurable) of every source on every
input and returns one list of results per source; a result is the JSON value the call returned, or None when
the program failed on that input for any reason (syntax error, exception, time limit, memory limit, crash,
junk that is not JSON, output over the size cap, a blocked operation).

How one program runs:
  - a fresh interpreter `python -I -B -c RUNNER` (isolated mode: no PYTHON* variables, no user site, neither
    the script's folder nor the cwd on sys.path, so the project's files cannot be imported), with a minimal
    environment, in its own process group and an empty temporary directory as cwd;
  - the runner imports numpy (programs may use it), then lowers its own resource limits: address space
    (memory_mb), CPU seconds, file size (1 MB), open files, child processes (0; the kernel ignores this one
    for root) and core dumps (0);
  - it then installs an audit hook (sys.addaudithook) that refuses: starting processes (os.system, exec,
    spawn, fork, subprocess), sockets, ctypes, signals to other processes, changing resource limits, and
    file-system access outside the temporary directory except reading and listing the interpreter's own
    library folders (sys.path: so lazy imports such as numpy.polynomial or scipy still work);
  - fds 1 and 2 point to /dev/null while the program runs, so prints cost nothing; results travel back one
    JSON line per input on a private copy of the original stdout pipe;
  - the parent reads that pipe with a byte cap and a wall-clock deadline per step (start-up, definition, one
    per input); past either it kills the whole process group. An in-child interval timer also interrupts a
    slow call so that the remaining inputs still run.

What this does NOT protect against (it is a guard against buggy programs, not a security boundary): the
audit hook lives in the same interpreter as the program, so a determined program can get around it (e.g.
through objects reachable by introspection, or ctypes calls that need no audited function); there is no
namespace, seccomp or chroot, so a program that gets around the hook can read any world-readable file, use
the network and see other processes; limits on memory are per process, not per machine. Run the search
under a container or an unprivileged user when the programs' author is not trusted. POSIX only (resource,
process groups).
"""
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# The code the child runs. Kept as a plain string so the child never imports anything from the project.
RUNNER = r'''
import json, os, sys, resource, signal
import numpy  # programs may use it; imported before the limits, which it does not need to respect
spec = json.loads(sys.stdin.read())
sys.stdin.close()
out = os.fdopen(os.dup(1), "w", buffering=1)  # private result channel: the original stdout pipe
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1); os.dup2(null, 2)  # program prints (Python or C) go nowhere

cpu = spec["cpu_seconds"]
for what, value in ((resource.RLIMIT_AS, spec["memory_bytes"]), (resource.RLIMIT_CPU, cpu),
                    (resource.RLIMIT_FSIZE, 1 << 20), (resource.RLIMIT_NOFILE, 64),
                    (resource.RLIMIT_NPROC, 0), (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(what, (value, value))
    except (ValueError, OSError):
        pass  # e.g. NOFILE above the current hard limit: keep the stricter existing one

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

def plain(obj):  # numpy values -> JSON values
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError("not JSON")

def on_alarm(signum, frame):
    raise TimeoutError("sandbox: time limit")

signal.signal(signal.SIGALRM, on_alarm)
timeout = spec["timeout"]
entry = spec["entry"]
sys.setrecursionlimit(10_000)
sys.addaudithook(hook)
out.write("ready\n")
scope = {"__name__": "__sandbox__"}
try:
    signal.setitimer(signal.ITIMER_REAL, timeout)
    exec(compile(spec["source"], "<program>", "exec"), scope)
    signal.setitimer(signal.ITIMER_REAL, 0)
    fn = scope[entry]
except BaseException:
    signal.setitimer(signal.ITIMER_REAL, 0)
    fn = None
out.write("defined\n")
for x in spec["inputs"]:
    line = "null"
    if fn is not None:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            y = fn(x)
            signal.setitimer(signal.ITIMER_REAL, 0)
            line = json.dumps(y, default=plain, allow_nan=False)
        except BaseException:
            signal.setitimer(signal.ITIMER_REAL, 0)
            line = "null"
    out.write(line + "\n")
out.flush()
os._exit(0)  # skip the program's atexit handlers and any threads it left running
'''


@dataclass
class Limits:
    """Per-program limits. `timeout` is wall-clock seconds for each call (the paper: 1 s per run)."""
    timeout: float = 1.0
    memory_mb: int = 1024  # address space of the child, numpy included (~150 MB of it)
    output_bytes: int = 1 << 20  # all results of one program together
    startup_timeout: float = 20.0  # interpreter + numpy import; generous because the machine may be busy


def run_programs(sources: list[str], inputs: list, timeout: float = 1.0, memory_mb: int = 1024,
                 workers: int | None = None, entry: str = "transform", output_bytes: int = 1 << 20) -> list[list]:
    """Results of entry(x) for every source (rows) and input (columns); None where a call failed.

    Inputs must be JSON-serialisable; each call gets its own fresh copy."""
    if not isinstance(entry, str) or not entry.isidentifier():
        raise ValueError(f"entry must be a Python identifier, got {entry!r}")
    payload = json.dumps(inputs)  # fails here, in the parent, on inputs that cannot travel
    limits = Limits(timeout=timeout, memory_mb=memory_mb, output_bytes=output_bytes)
    n = len(sources)
    if n == 0:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda src: run_one(src, payload, len(inputs), entry, limits), sources))


def run_one(source: str, inputs_json: str, n_inputs: int, entry: str, limits: Limits) -> list:
    """One program in one fresh process; see the module docstring for the protocol."""
    if not isinstance(source, str):
        return [None] * n_inputs
    cpu = int(limits.startup_timeout + limits.timeout * (n_inputs + 1)) + 1
    spec = (f'{{"source": {json.dumps(source)}, "entry": {json.dumps(entry)}, "timeout": {limits.timeout}, '
            f'"memory_bytes": {limits.memory_mb << 20}, "cpu_seconds": {cpu}, "inputs": {inputs_json}}}')
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
            lines = read_lines(proc, limits, n_inputs)
        finally:
            kill_group(proc)
    return decode_results(lines, n_inputs)


def child_env() -> dict:
    """A minimal environment: one BLAS thread (the parent runs many children at once), no inherited secrets."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    if "LD_LIBRARY_PATH" in os.environ:  # some Python builds need it to start at all
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def read_lines(proc: subprocess.Popen, limits: Limits, n_inputs: int) -> list[bytes]:
    """Lines the child wrote, read until EOF, a missed deadline or the byte cap (then it is killed).

    Deadlines: start-up until "ready", then timeout + grace for each later line (definition, each input)."""
    grace = 1.0 + 2 * limits.timeout  # the in-child timer fires first (with slack for a busy machine);
    # this deadline only catches a child that ignores the timer
    buf, total = b"", 0
    lines: list[bytes] = []
    deadline = time.monotonic() + limits.startup_timeout
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(lines) < n_inputs + 2:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break  # too slow
            chunk = os.read(fd, 65536)
            if not chunk:
                break  # exited or crashed
            total += len(chunk)
            if total > limits.output_bytes + 64:
                break  # too much output: partial results are dropped with the rest
            buf += chunk
            *done, buf = buf.split(b"\n")
            if done:
                lines += done
                deadline = time.monotonic() + grace
    return lines


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.stdout.close()
    proc.wait()


def decode_results(lines: list[bytes], n_inputs: int) -> list:
    """Results from the child's lines: ['ready', 'defined', one JSON value per input]; missing ones are None."""
    results = [None] * n_inputs
    if lines[:2] != [b"ready", b"defined"]:
        return results
    for i, line in enumerate(lines[2:2 + n_inputs]):
        try:
            results[i] = json.loads(line)
        except ValueError:
            results[i] = None
    return results
