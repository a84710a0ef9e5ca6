"""The package's rooms: no import cycle between modules, and the core stays torch-only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hazematching

PACKAGE = Path(hazematching.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """hazematching modules that ``path`` imports anywhere (module level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_cycle_check_sees_cycles(tmp_path, monkeypatch):
    """The check above can fail: the old predict -> cli -> experiment -> predict circle is found."""
    edges = {"a.predict": {"a.cli"}, "a.cli": {"a.experiment"}, "a.experiment": {"a.predict"}}
    monkeypatch.setattr(__import__(__name__), "graph", lambda: edges)
    try:
        test_no_import_cycles()
    except AssertionError as exc:
        assert all(name in str(exc) for name in edges)
    else:
        raise AssertionError("the cycle was not found")


def test_the_napari_plugin_stays_out_of_the_core_install():
    """No module outside the plugin imports it, and importing the package and its CLI loads no Qt."""
    users = [
        m
        for m, deps in graph().items()
        if not m.startswith("hazematching.napari") and any(d.startswith("hazematching.napari") for d in deps)
    ]
    assert not users
    code = (
        "import sys, hazematching, hazematching.cli, hazematching.inference.predict\n"
        "gui = ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'magicgui', 'vispy')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in gui)\n"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_core_imports_torch_only():
    for path in (PACKAGE / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= {"torch"} | set(sys.stdlib_module_names), f"{path.name} imports {roots}"


def test_ruff_check_and_format_are_clean():
    """The lint rules and formatting configured in pyproject.toml hold for the whole repository."""
    pytest.importorskip("ruff")
    root = Path(__file__).resolve().parents[1]  # the repository, wherever the package is installed
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(root)], capture_output=True, text=True, cwd=root
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


@pytest.mark.parametrize(
    "command, expected",
    [
        (["trainer/train.py", "--help"], "--compile {auto,on,off}"),
        (["-m", "hazematching.training", "--help"], "--resume-from-checkpoint"),
        (["-m", "hazematching", "predict", "--help"], "--tile-size"),
    ],
)
def test_entry_points(command, expected):
    """The script users launch, the installed trainer module and ``python -m hazematching`` all work."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
