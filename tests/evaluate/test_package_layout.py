"""The shape of the evaluate package: every module imports on its own in a fresh interpreter, the
shared modules depend on nothing in the package, and no benchmark module imports another."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vlmswap.evaluate

PACKAGE = Path(vlmswap.evaluate.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
BENCHMARK_MODULES = {"vqav2", "gqa", "vizwiz", "textvqa", "pope", "tallyqa", "refcoco", "ocidref"}
SHARED_MODULES = {"records", "metrics", "prompts"}  # depend on nothing in the package


def _package_imports(module: str) -> set[str]:
    """The vlmswap.evaluate modules `module` imports, at any depth of its code."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["vlmswap", "evaluate"] and len(parts) > 2 and parts[2] in MODULES:
                found.add(parts[2])
    return found


def test_every_benchmark_module_is_registered_here():
    assert BENCHMARK_MODULES <= set(MODULES)
    registered = {type(b).__module__.rsplit(".", 1)[1] for b in vlmswap.evaluate.BENCHMARKS.values()}
    assert registered == BENCHMARK_MODULES


@pytest.mark.parametrize("module", sorted(BENCHMARK_MODULES))
def test_no_benchmark_module_imports_another_or_the_registry(module):
    imported = _package_imports(module)
    assert not imported & (BENCHMARK_MODULES - {module}), imported
    assert "registry" not in imported


@pytest.mark.parametrize("module", sorted(SHARED_MODULES))
def test_shared_modules_depend_on_nothing_in_the_package(module):
    assert _package_imports(module) == set()
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith("vlmswap") for m in imported), imported


def test_no_import_cycle_between_the_modules():
    graph = {m: _package_imports(m) for m in MODULES}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", " -> ".join(path + [m])
        state[m] = "open"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])


def test_each_module_imports_alone_in_a_fresh_interpreter():
    # one interpreter per module, so no module is helped by another one imported before it
    for module in MODULES:
        result = subprocess.run([sys.executable, "-c", f"import vlmswap.evaluate.{module}"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{module}: {result.stderr[-2000:]}"
