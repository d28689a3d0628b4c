"""The code that runs inside the sandbox: one program's calls, and the warm worker that forks a child per program.

This file imports nothing from the project (the sandbox cannot see the project): the host passes its text to
`python -I -B -c`, and tasks/sandbox.py imports it only for `read_lines`, which both sides use.

Protocol of one job (a JSON spec: source, entry, numpy_entry, inputs, modules, timeout, memory_bytes,
cpu_seconds, max_processes, output_bytes): the child writes "ready", then "defined", then one JSON line per
input (`null` where the call failed) to a pipe of its own; whoever reads the pipe caps bytes and time.

Time: each call gets `timeout` seconds by a timer in the child (a TimeoutError the program may catch), and
whoever reads the child's lines allows `timeout + KILL_AFTER` seconds per line and then kills the child, so a
program that blocks, ignores or swallows its timer still gets no more.

The warm worker (`serve`) is pid 1 of its own pid namespace, started by tasks/sandbox.py. Per job it forks a
child from its pristine, numpy-loaded state, reads the child's lines, then kills every other process in the
namespace and reaps them, so nothing a program started outlives its job. Its own protections: it has no signal
handlers (the kernel then drops every signal sent to a namespace's pid 1 from inside it), it is not dumpable
(no ptrace, no /proc/1/mem), and the child closes every descriptor but its result pipe before the program runs.
Before its first job it installs a seccomp filter, which every child inherits (`refuse_syscalls`): the system
calls through which a program could reach past its namespaces or leave something behind in the kernel fail.
The filter knows x86_64 and aarch64 only; elsewhere the worker does not start.
"""
import ctypes
import errno
import json
import os
import random
import resource
import selectors
import signal
import struct
import sys
import time
import types

import numpy

KILL_AFTER = 0.25  # seconds past a call's limit before the reader kills a child whose own timer did not stop it


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
    # "ready" comes as soon as the child runs; then one line per call, each within the call's limit
    lines = read_lines(r, len(spec["inputs"]) + 2, 5.0, spec["timeout"] + KILL_AFTER, spec["output_bytes"] + 64)
    os.close(r)
    kill_others()
    return b"\n".join(lines)


def prctl(option: int, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if libc.prctl(option, *args, *[0] * (4 - len(args))) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def no_dumping() -> None:
    """Not dumpable: programs (same uid) cannot ptrace this process or read its memory."""
    PR_SET_DUMPABLE = 4
    prctl(PR_SET_DUMPABLE, 0)


# -- refused system calls (seccomp) -----------------------------------------------------------------------

# What no program needs, and where each leads past its sandbox: sockets other than AF_UNIX (a network namespace
# does not cover every family: vsock reaches the host); POSIX message queues, SysV IPC and kernel keys (they
# outlive the process that made them, keys even the namespaces); new namespaces, bpf, perf events and
# userfaultfd (kernel surface that exploits go through); io_uring (its operations bypass this filter).
# Numbers from the kernel's syscall tables, per architecture.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYSCALLS = {  # name: (x86_64, aarch64)
    "socket": (41, 198), "socketpair": (53, 199), "clone": (56, 220), "clone3": (435, 435),
    "unshare": (272, 97), "setns": (308, 268), "mq_open": (240, 180), "shmget": (29, 194), "semget": (64, 190),
    "msgget": (68, 186), "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282)}
REFUSED = ("unshare", "setns", "mq_open", "shmget", "semget", "msgget", "add_key", "request_key", "keyctl",
           "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd")
CLONE_NEW_ANY = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
X32_BIT = 0x40000000  # x86_64's second numbering (the x32 ABI) would get around a filter of the first

# classic BPF: load a word of struct seccomp_data (nr at 0, arch at 4, args[0] at 16), compare, return
LOAD, JUMP_EQ, JUMP_GE, JUMP_ANY_BIT, RETURN = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW, KILL = 0x7FFF0000, 0x80000000


def fail_with(code: int) -> int:
    return 0x00050000 | code  # SECCOMP_RET_ERRNO


def assemble(rows: list) -> bytes:
    """Rows of (op, k, jump if true, jump if false), jumps naming a later label (a row that is a str)."""
    where, code = {}, []
    for row in rows:
        if isinstance(row, str):
            where[row] = len(code)
        else:
            code.append(row)

    def offset(label, i):
        return 0 if label is None else where[label] - i - 1
    return b"".join(struct.pack("=HBBI", op, offset(yes, i), offset(no, i), k)  # struct sock_filter
                    for i, (op, k, yes, no) in enumerate(code))


def syscall_filter(machine: str) -> bytes:
    """The filter: a foreign architecture or numbering kills; sockets other than AF_UNIX fail with
    EAFNOSUPPORT, clone3 with ENOSYS (threads then use clone, whose namespace flags are checked), the rest of
    REFUSED with EPERM."""
    nr = {name: numbers[list(AUDIT_ARCH).index(machine)] for name, numbers in SYSCALLS.items()}
    rows = [(LOAD, 4, None, None), (JUMP_EQ, AUDIT_ARCH[machine], None, "kill"), (LOAD, 0, None, None)]
    if machine == "x86_64":
        rows += [(JUMP_GE, X32_BIT, "kill", None)]
    rows += [(JUMP_EQ, nr["socket"], "socket", None), (JUMP_EQ, nr["socketpair"], "socket", None),
             (JUMP_EQ, nr["clone"], "clone", None), (JUMP_EQ, nr["clone3"], "nosys", None)]
    rows += [(JUMP_EQ, nr[name], "refuse", None) for name in REFUSED]
    rows += [(RETURN, ALLOW, None, None),
             "socket", (LOAD, 16, None, None), (JUMP_EQ, 1, "allow", None),  # 1: AF_UNIX
             (RETURN, fail_with(errno.EAFNOSUPPORT), None, None),
             "clone", (LOAD, 16, None, None), (JUMP_ANY_BIT, CLONE_NEW_ANY, "refuse", None),
             "allow", (RETURN, ALLOW, None, None),
             "refuse", (RETURN, fail_with(errno.EPERM), None, None),
             "nosys", (RETURN, fail_with(errno.ENOSYS), None, None),
             "kill", (RETURN, KILL, None, None)]
    return assemble(rows)


def refuse_syscalls() -> None:
    """Install the filter on this process and every process it starts from now on (it cannot be removed)."""
    machine = os.uname().machine
    if machine not in AUDIT_ARCH or struct.calcsize("P") != 8 or sys.byteorder != "little":
        raise OSError(f"no seccomp filter for this machine ({machine}, {8 * struct.calcsize('P')}-bit)")
    code = syscall_filter(machine)
    rows = ctypes.create_string_buffer(code, len(code))

    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    program = Program(len(code) // 8, ctypes.addressof(rows))
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    try:
        prctl(PR_SET_NO_NEW_PRIVS, 1)  # required to install a filter without privileges
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(program))
    except OSError as e:
        raise OSError(e.errno, "seccomp filters unavailable (prctl PR_SET_SECCOMP refused)") from None


def serve() -> None:
    """Read one JSON spec per line on stdin; answer each with "<n bytes>\\n" and the child's lines."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handler: the kernel drops signals sent to pid 1
    no_dumping()
    refuse_syscalls()
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open("/dev/null", os.O_RDWR), 1)
    reply.write(b"ready\n")
    reply.flush()
    for line in sys.stdin.buffer:  # EOF (the host went away) ends the worker and its namespace
        blob = run_isolated(json.loads(line))
        reply.write(b"%d\n" % len(blob) + blob)
        reply.flush()
