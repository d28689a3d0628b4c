"""The sandbox returns each call's JSON result, or None when the program misbehaves, and the parent survives.

All hostile programs run in one batch (one fresh process each, two at a time), shared by the tests below, so
the file stays fast; every program also gets a harmless second input to show which calls still ran.
"""
import pytest

from tasks.sandbox import run_programs

INPUTS = [[[1, 2], [3, 4]], [[5]]]

PROGRAMS = {
    "flip": "def transform(g):\n    return [r[::-1] for r in g]",
    "numpy": "import numpy as np\ndef transform(g):\n    return np.array(g, dtype=np.int64)[::-1]",
    "loop": "def transform(g):\n    while True:\n        pass",
    # swallows the in-child timer: only the parent's kill stops it
    "stubborn_loop": ("def transform(g):\n    while True:\n        try:\n            while True:\n                pass\n"
                      "        except BaseException:\n            pass"),
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
    out = run_programs(sources, INPUTS, timeout=1.0, memory_mb=512, workers=2)
    return dict(zip(PROGRAMS, out)), marker


def test_good_programs_return_json_results(results):
    res, _ = results
    assert res["flip"] == [[[2, 1], [4, 3]], [[5]]]
    assert res["numpy"] == [[[3, 4], [1, 2]], [[5]]]  # arrays come back as nested lists of ints
    assert res["lazy_imports"] == [5.0, 3.0]  # 1 + 2 * len(g)
    assert res["write_own_dir"] == ["hi", "hi"]  # its own temporary folder is writable
    assert res["prints_megabytes"] == INPUTS  # prints are discarded, the result still arrives


@pytest.mark.parametrize("name", ["loop", "stubborn_loop", "memory_bomb", "ctypes_segfault", "recursion_crash",
                                  "os_system", "subprocess", "fork", "kill_parent", "socket", "read_outside",
                                  "list_outside", "import_project", "raise_limit", "huge_result", "junk_object",
                                  "junk_nan", "exits", "sys_exit", "syntax_error", "no_entry"])
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
