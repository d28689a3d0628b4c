"""The code that runs inside the sandbox: one program's calls, and the warm worker that forks a child per program.

This file imports nothing from the project (the sandbox cannot see the project): the host passes its text to
`python -I -B -c`, and tasks/sandbox.py imports it only for `read_lines`, which both sides use.

Protocol of one job (a JSON spec: source, entry, numpy_entry, inputs, modules, timeout, memory_bytes,
cpu_seconds, max_processes, output_bytes): the child writes "ready", then "defined", then one JSON line per
input (`null` where the call failed) to a pipe of its own; whoever reads the pipe caps bytes and time.

The warm worker (`serve`) is pid 1 of its own pid namespace, started by tasks/sandbox.py. Per job it forks a
child from its pristine, numpy-loaded state, reads the child's lines, then kills every other process in the
namespace and reaps them, so nothing a program started outlives its job. Its own protections: it has no signal
handlers (the kernel then drops every signal sent to a namespace's pid 1 from inside it), it is not dumpable
(no ptrace, no /proc/1/mem), and the child closes every descriptor but its result pipe before the program runs.
"""
import json
import os
import random
import resource
import selectors
import signal
import sys
import time
import types

import numpy


# -- one program (in the child) ---------------------------------------------------------------------------

def set_limits(spec: dict) -> None:
    """Lower this process's limits; a limit above the current hard one keeps the stricter existing one."""
    for what, value in ((resource.RLIMIT_AS, spec["memory_bytes"]), (resource.RLIMIT_CPU, spec["cpu_seconds"]),
                        (resource.RLIMIT_FSIZE, 1 << 20), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_NPROC, spec["max_processes"]), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass


COMPILED: dict = {}  # (name, source) -> code; the warm worker fills it before forking, so children only exec


def compiled(name: str, text: str):
    if (name, text) not in COMPILED:
        COMPILED[(name, text)] = compile(text, f"<{name}>", "exec")
    return COMPILED[(name, text)]


def load_modules(modules: dict) -> None:
    """Helper modules the programs may import (e.g. `common` for BARC programs), made from their source text."""
    for name, text in modules.items():
        module = types.ModuleType(name)
        exec(compiled(name, text), module.__dict__)
        sys.modules[name] = module


def plain(obj):  # numpy values -> JSON values
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError("not JSON")


def on_alarm(signum, frame):
    raise TimeoutError("sandbox: time limit")


def run_job(spec: dict, out) -> None:
    """Define the program, then call its entry on every input; one line per step to `out` (a text file)."""
    signal.signal(signal.SIGALRM, on_alarm)
    timeout = spec["timeout"]
    random.seed(0)
    numpy.random.seed(0)  # programs that draw random numbers score the same every time
    sys.setrecursionlimit(10_000)
    out.write("ready\n")
    out.flush()
    scope = {"__name__": "__sandbox__"}
    fn, as_array = None, False
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        load_modules(spec["modules"])
        exec(compile(spec["source"], "<program>", "exec"), scope)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if callable(scope.get(spec["entry"])):
            fn = scope[spec["entry"]]
        elif spec["numpy_entry"] and callable(scope.get(spec["numpy_entry"])):
            fn, as_array = scope[spec["numpy_entry"]], True
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
    out.write("defined\n")
    out.flush()  # each line as it comes: the reader's deadline is per line
    for x in spec["inputs"]:
        line = "null"
        if fn is not None:
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                y = fn(numpy.array(x) if as_array else x)
                line = json.dumps(y, default=plain, allow_nan=False)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except BaseException:
                signal.setitimer(signal.ITIMER_REAL, 0)
                line = "null"
        out.write(line + "\n")
        out.flush()


# -- reading a child's lines (worker and host) ------------------------------------------------------------

def read_lines(fd: int, n_lines: int, first_deadline: float, grace: float, cap: int) -> list[bytes]:
    """Up to n_lines lines from fd, read until EOF, a missed deadline or more than `cap` bytes.

    Deadlines: first_deadline seconds for the first line, then `grace` seconds for each later one."""
    buf, total = b"", 0
    lines: list[bytes] = []
    deadline = time.monotonic() + first_deadline
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(lines) < n_lines:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break  # too slow
            chunk = os.read(fd, 65536)
            if not chunk:
                break  # exited or crashed
            total += len(chunk)
            if total > cap:
                break  # too much output: partial results are dropped with the rest
            buf += chunk
            *done, buf = buf.split(b"\n")
            if done:
                lines += done
                deadline = time.monotonic() + grace
    return lines[:n_lines]


# -- the warm worker (pid 1 of its namespace) -------------------------------------------------------------

def child(spec: dict, result_fd: int) -> None:
    """In the forked child: keep only the result pipe, lower the limits, run the job, exit without cleanup."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # prints (Python or C) go nowhere
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 1 << 16)  # the worker's pipes to the host among them
    set_limits(spec)
    try:
        run_job(spec, os.fdopen(result_fd, "w"))
    finally:
        os._exit(0)  # skip the program's atexit handlers and any threads it left running


def kill_others() -> None:
    """SIGKILL every process of the namespace but this one (pid 1), and reap them all."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def run_isolated(spec: dict) -> bytes:
    """One job in a fresh child; its lines (capped) as one blob, "\\n"-joined."""
    for name, text in spec["modules"].items():
        compiled(name, text)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child(spec, w)
    os.close(w)
    grace = 1.0 + 2 * spec["timeout"]  # the child's own timer fires first; this only catches one that ignores it
    lines = read_lines(r, len(spec["inputs"]) + 2, 5.0 + grace, grace, spec["output_bytes"] + 64)
    os.close(r)
    kill_others()
    return b"\n".join(lines)


def no_dumping() -> None:
    """Not dumpable: programs (same uid) cannot ptrace this process or read its memory."""
    import ctypes
    PR_SET_DUMPABLE = 4
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def serve() -> None:
    """Read one JSON spec per line on stdin; answer each with "<n bytes>\\n" and the child's lines."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handler: the kernel drops signals sent to pid 1
    no_dumping()
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open("/dev/null", os.O_RDWR), 1)
    reply.write(b"ready\n")
    reply.flush()
    for line in sys.stdin.buffer:  # EOF (the host went away) ends the worker and its namespace
        blob = run_isolated(json.loads(line))
        reply.write(b"%d\n" % len(blob) + blob)
        reply.flush()
