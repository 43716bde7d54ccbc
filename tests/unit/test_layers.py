"""The house rule, checked on the source: each package of harness/ imports only from its own
package and the layers below it, and nothing is imported inside a function but the heavy
optional packages (docs/architecture.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "harness"

#: Bottom first; packages on one line are side by side and may not import each other.
LAYERS = [("core",), ("qemu", "report"), ("images", "host"), ("guest",), ("scenario", "virt"), ("lab",),
          ("run",), ("plugin",), ("cli",)]
RANK = {pkg: n for n, row in enumerate(LAYERS) for pkg in row}
#: Imported inside functions on purpose: slow to import, and only some runs need them.
HEAVY_OPTIONAL = {"matplotlib", "paramiko", "libvirt", "libvirt_qemu"}


def _modules(root: Path = HARNESS):
    for path in sorted(root.rglob("*.py")):
        yield path, path.relative_to(root.parent).with_suffix("").parts


def _targets(node: ast.AST, parts: tuple[str, ...]) -> list[str]:
    """The absolute module names an import statement reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    if node.level:
        base = list(package[:len(package) - node.level + 1])
        return [".".join(base + [node.module] if node.module else base)]
    return [node.module or ""]


def _package(parts: tuple[str, ...]) -> str | None:
    return parts[1] if len(parts) > 2 else None


def _imports(tree: ast.AST):
    """(import node, whether it sits inside a function or class body)."""
    def walk(node, inner):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, inner
            yield from walk(child, inner or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    yield from walk(tree, False)


def _violations(root: Path = HARNESS):
    for path, parts in _modules(root):
        here = _package(parts)
        tree = ast.parse(path.read_text())
        for node, inner in _imports(tree):
            for target in _targets(node, parts):
                top = target.split(".")[0]
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                if inner and top not in HEAVY_OPTIONAL:
                    yield f"{where}: imports {target} inside a function"
                if top != "harness" or here is None:
                    continue
                there = target.split(".")[1] if target.count(".") else None
                if there is None or there == here or there not in RANK:
                    continue
                if RANK[there] >= RANK[here]:
                    yield f"{where}: {here}/ imports {there}/ ({target}), which is not below it"


def test_every_package_has_a_layer():
    packages = {p.name for p in HARNESS.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK), "add the new package to LAYERS and docs/architecture.md"


def test_no_upward_import_and_no_import_inside_a_function():
    found = list(_violations())
    assert not found, "\n".join(found)


def test_the_check_sees_an_upward_import(tmp_path):
    """The contract is not vacuous: a planted upward import and a function-level import are
    both reported."""
    fake = tmp_path / "harness"
    for pkg in RANK:
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("")
    (fake / "core" / "bad.py").write_text("from harness.guest import guest\n"
                                          "def f():\n    import json\n")
    found = list(_violations(fake))
    assert any("core/ imports guest/" in v for v in found)
    assert any("imports json inside a function" in v for v in found)


@pytest.mark.parametrize("limit,kind", [(50, ast.FunctionDef), (300, ast.ClassDef)])
def test_no_function_over_50_lines_and_no_class_over_300(limit, kind):
    long = []
    for path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if kind is ast.FunctionDef else (kind,)
            if isinstance(node, kinds) and node.end_lineno - node.lineno + 1 > limit:
                long.append(f"{path.relative_to(HARNESS.parent)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "\n".join(long)
