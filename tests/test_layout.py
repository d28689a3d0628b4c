"""The shape of the code a reader follows: the command line lives only in migrate.py, nothing imports it, and the
modules' imports form no cycle (each can be read after the ones it imports). Imports are read from the source
(ast), function-level ones included, so a cycle hidden inside a function counts too."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "migrate"  # the command line; every other module takes plain values


def modules() -> dict[str, Path]:
    """The project's importable modules: top-level files and tasks/ (bench/ and experiment scripts are callers)."""
    found = {p.stem: p for p in ROOT.glob("*.py")}
    found |= {f"tasks.{p.stem}" if p.stem != "__init__" else "tasks": p for p in (ROOT / "tasks").glob("*.py")}
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from tasks import arc
    return {n for n in names if n in known}


def graph() -> dict[str, set[str]]:
    """Imports between the top-level modules, the tasks package counted as one (its built-in tasks import the
    protocol in tasks/__init__.py, which looks them up by name)."""
    mods, g = modules(), {}
    for name, path in mods.items():
        unit = name.split(".")[0]
        g.setdefault(unit, set()).update(dep.split(".")[0] for dep in imports_of(path, set(mods)))
    return {name: deps - {name} for name, deps in g.items()}


def test_only_the_entry_script_parses_a_command_line():
    for name, path in modules().items():
        if name != ENTRY:
            assert "argparse" not in imports_of(path, {"argparse"}), f"{name} imports argparse"


def test_nothing_imports_the_entry_script():
    assert not [name for name, deps in graph().items() if ENTRY in deps]


def test_the_modules_import_each_other_without_a_cycle():
    g, done, path = graph(), set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in sorted(g[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(g):
        visit(name)
