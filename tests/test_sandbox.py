"""The sandbox returns each call's JSON result, or None when the program misbehaves, and the parent survives.

The first half pins the process path (the slow twin and the fallback where namespaces are unavailable): all
hostile programs run in one batch (one fresh process each, two at a time), shared by the tests below, so the
file stays fast; every program also gets a harmless second input to show which calls still ran. The second half
checks that the isolated workers give the same results on honest programs, the BARC program shape, and how
the modes choose and refuse. Attacks on the isolated workers: tests/test_sandbox_attacks.py.
"""
import os
import sys

import pytest

import tasks.sandbox as sandbox
from tasks.arc import COMMON as ARC_COMMON
from tasks.sandbox import SandboxUnavailable, isolation, run_programs

INPUTS = [[[1, 2], [3, 4]], [[5]]]

PROGRAMS = {
    "flip": "def transform(g):\n    return [r[::-1] for r in g]",
    "numpy": "import numpy as np\ndef transform(g):\n    return np.array(g, dtype=np.int64)[::-1]",
    "loop": "def transform(g):\n    while True:\n        pass",
    # swallows the in-child timer: only the parent's kill stops it
    "stubborn_loop": ("def transform(g):\n    while True:\n        try:\n            while True:\n                pass\n"
                      "        except BaseException:\n            pass"),
    # blocks the in-child timer: a call of 1.6 s must fail all the same
    "slow_alarm_blocked": ("import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\n"
                           "def transform(g):\n    time.sleep(1.6)\n    return g"),
    "loop_on_first": "def transform(g):\n    while len(g) == 2:\n        pass\n    return g",
    "memory_bomb": "def transform(g):\n    x = []\n    while True:\n        x.append(bytearray(10**7))",
    "ctypes_segfault": "import ctypes\ndef transform(g):\n    return ctypes.c_char_p(1).value",
    "recursion_crash": ("import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\n"
                        "def transform(g):\n    return f(0)"),
    "os_system": "import os\ndef transform(g):\n    os.system('touch {marker}')\n    return g",
    "subprocess": "import subprocess\ndef transform(g):\n    subprocess.run(['touch', '{marker}'])\n    return g",
    "fork": "import os\ndef transform(g):\n    os.fork()\n    return g",
    "kill_parent": "import os\ndef transform(g):\n    os.kill(os.getppid(), 9)\n    return g",
    "socket": "import socket\ndef transform(g):\n    socket.socket()\n    return g",
    "read_outside": "def transform(g):\n    return open('{secret}').read()",
    "list_outside": "import os\ndef transform(g):\n    return os.listdir('{secret_dir}')",
    "import_project": "import tasks\ndef transform(g):\n    return g",
    "raise_limit": ("import resource\ndef transform(g):\n    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
                    "    return g"),
    # modules first imported by the program: the library folders stay readable and listable
    "lazy_imports": ("import email.mime.text, numpy.polynomial\ndef transform(g):\n"
                     "    return numpy.polynomial.Polynomial([1, 2])(len(g)).item()"),
    "write_own_dir": "def transform(g):\n    open('note.txt', 'w').write('hi')\n    return open('note.txt').read()",
    "prints_megabytes": "def transform(g):\n    for _ in range(20):\n        print('x' * 10**6)\n    return g",
    "huge_result": "def transform(g):\n    return [[1] * 2000] * 2000",
    "junk_object": "def transform(g):\n    return object()",
    "junk_nan": "def transform(g):\n    return float('nan')",
    "exits": "import os\ndef transform(g):\n    os._exit(3)",
    "sys_exit": "import sys\ndef transform(g):\n    sys.exit(0)",
    "syntax_error": "def transform(g) return g",
    "no_entry": "def solve(g):\n    return g",
    "raises_on_second": "def transform(g):\n    return [g[1]]",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.txt"
    secret.write_text("do not read")
    marker = outside / "pwned"
    sources = [src.format(marker=marker, secret=secret, secret_dir=outside) for src in PROGRAMS.values()]
    out = run_programs(sources, INPUTS, timeout=1.0, memory_mb=512, workers=2, sandbox="process")
    return dict(zip(PROGRAMS, out)), marker


def test_good_programs_return_json_results(results):
    res, _ = results
    assert res["flip"] == [[[2, 1], [4, 3]], [[5]]]
    assert res["numpy"] == [[[3, 4], [1, 2]], [[5]]]  # arrays come back as nested lists of ints
    assert res["lazy_imports"] == [5.0, 3.0]  # 1 + 2 * len(g)
    assert res["write_own_dir"] == ["hi", "hi"]  # its own temporary folder is writable
    assert res["prints_megabytes"] == INPUTS  # prints are discarded, the result still arrives


@pytest.mark.parametrize("name", ["loop", "stubborn_loop", "slow_alarm_blocked", "memory_bomb", "ctypes_segfault",
                                  "recursion_crash", "os_system", "subprocess", "fork", "kill_parent", "socket",
                                  "read_outside", "list_outside", "import_project", "raise_limit", "huge_result",
                                  "junk_object", "junk_nan", "exits", "sys_exit", "syntax_error", "no_entry"])
def test_misbehaving_program_gives_none(results, name):
    res, _ = results
    assert res[name] == [None, None]


def test_timer_interrupts_one_call_and_the_next_input_still_runs(results):
    res, _ = results
    assert res["loop_on_first"] == [None, [[5]]]
    assert res["raises_on_second"] == [[[3, 4]], None]


def test_blocked_commands_had_no_effect(results):
    _, marker = results
    assert not marker.exists()  # neither os.system nor subprocess ran `touch`
    # (kill_parent aimed SIGKILL at this very pytest process: had it worked, no test would report at all)


def test_shape_of_answer_and_bad_arguments():
    assert run_programs([], INPUTS) == []
    assert run_programs(["def transform(g):\n    return g"], []) == [[]]
    assert run_programs([None], INPUTS) == [[None, None]]  # not a string: no process needed
    with pytest.raises(ValueError, match="identifier"):
        run_programs(["x = 1"], INPUTS, entry="not valid")
    assert run_programs(["def main(x):\n    return x + 1"], [1, 2], entry="main") == [[2, 3]]
    with pytest.raises(ValueError, match="sandbox must be"):
        run_programs(["x = 1"], INPUTS, sandbox="none")


# -- isolated workers against the slow twin; modes ---------------------------------------------------------

namespaces = pytest.mark.skipif(not sys.platform.startswith("linux") or isolation("auto").startswith(
    "sandbox: WARNING"), reason="Linux namespaces unavailable here: only the process path runs")

HONEST = ["flip", "numpy", "lazy_imports", "prints_megabytes", "huge_result", "junk_nan", "raises_on_second",
          "loop_on_first", "syntax_error", "no_entry", "sys_exit", "exits", "memory_bomb", "ctypes_segfault"]
BARC = ("from common import *\nimport numpy as np\ndef main(input_grid):\n"
        "    return scale_sprite(crop(input_grid, background=Color.BLACK), 2)")


@namespaces
def test_isolated_workers_equal_the_process_path_on_honest_and_failing_programs():
    sources = [PROGRAMS[name] for name in HONEST] + [BARC]
    inputs = [[[0, 0, 0], [0, 7, 0]], [[5]]]
    kw = dict(timeout=1.0, memory_mb=512, workers=2, numpy_entry="main", modules={"common": ARC_COMMON})
    fast = run_programs(sources, inputs, sandbox="strict", **kw)
    assert fast == run_programs(sources, inputs, sandbox="process", **kw)
    assert fast[-1] == [[[7, 7], [7, 7]], [[5, 5], [5, 5]]]  # numpy main with the common helpers
    assert fast[HONEST.index("memory_bomb")] == [None, None]  # failures agree too, not only successes


@namespaces
def test_isolated_program_sees_no_writable_file_system_and_no_project():
    src = ("import os\ndef transform(g):\n    try:\n        open('note.txt', 'w')\n        return 'wrote'\n"
           "    except OSError as e:\n        return [e.errno, os.getcwd(), os.path.exists({here!r})]")
    [[res]] = run_programs([src.format(here=os.path.abspath(__file__))], [0], sandbox="strict")
    assert res == [30, "/", False]  # EROFS: nothing is writable; the project's files are not there


def test_strict_refuses_and_auto_falls_back_where_namespaces_are_unavailable(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "_pool", None)
    monkeypatch.setattr(sandbox, "_failure", "unshare: unshare failed: Operation not permitted")
    with pytest.raises(SandboxUnavailable, match="^--sandbox strict: Linux namespaces unavailable"):
        run_programs(["def transform(g):\n    return g"], [1], sandbox="strict")
    assert run_programs(["def transform(g):\n    return g"], [1], sandbox="auto") == [[1]]  # the process path
    line = isolation("auto")
    assert line.startswith("sandbox: WARNING") and "not a security boundary" in line and "\n" not in line


def test_namespaces_work_where_ci_runs():
    """CI runs as root on Linux: there the isolated workers must start (else the attack suite would be skipped)."""
    if not (sys.platform.startswith("linux") and os.geteuid() == 0):
        pytest.skip("only root on Linux is required to have namespaces")
    line = isolation("strict")
    assert line.startswith("sandbox: isolated workers") and "\n" not in line
