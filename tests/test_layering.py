"""The architecture holds: every import points down, and the public surface is what it says."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import modelslab_async

PACKAGE = Path(modelslab_async.__file__).parent
README = PACKAGE.parent / "README.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module of the package this file imports, TYPE_CHECKING blocks and functions too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                    found.add(candidate)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found.update(n for n in names if n and n.startswith("modelslab_async"))
    return {target for target in found if target != name}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path) & set(modules) for name, path in modules.items()}


def test_no_module_imports_in_a_circle() -> None:
    """No cycles, not even under TYPE_CHECKING or inside functions."""
    edges = graph()
    for package in [name for name in edges if (PACKAGE.parent / name.replace(".", "/")).is_dir()]:
        for module in edges:  # a package's __init__ may gather its own modules
            if module.startswith(package + "."):
                edges[package].discard(module)
                edges[module].discard(package)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_dispatcher_uses_only_the_clients_public_api() -> None:
    """The batch layer sits on the client; it never reaches into its private parts."""
    source = (PACKAGE / "_dispatch.py").read_text()
    assert "client._" not in source
    assert "modelslab_async._client" not in imports_of(PACKAGE / "_dispatch.py")


def test_every_type_in_a_public_signature_is_exported() -> None:
    """A user can name every type the public API takes or returns; no pool internals leak."""
    exported = {getattr(modelslab_async, name) for name in modelslab_async.__all__}
    missing: set[str] = set()
    for name in modelslab_async.__all__:
        value = getattr(modelslab_async, name)
        if not inspect.isclass(value):
            continue
        for member_name, member in vars(value).items():
            if member_name.startswith("_") or not callable(member):
                continue
            hints = typing.get_type_hints(member, vars(sys.modules[value.__module__]))
            for hint in hints.values():
                for part in _classes(hint):
                    if part.__module__.startswith("modelslab_async") and part not in exported:
                        missing.add(f"{name}.{member_name}: {part.__name__}")
    assert not missing
    for internal in ("acquire", "release", "record_error", "record_answer", "route", "routes"):
        assert not hasattr(modelslab_async.ServerPool, internal)
    assert not hasattr(modelslab_async.Client, "wire_body")
    assert not hasattr(modelslab_async.RetryPolicy, "retrying")


def _classes(hint: object) -> list[type]:
    if inspect.isclass(hint):
        return [hint]
    return [c for arg in typing.get_args(hint) for c in _classes(arg)]


def test_a_typo_in_an_import_fails_under_mypy(tmp_path: Path) -> None:
    """No module-level __getattr__ swallows unknown names."""
    assert not hasattr(modelslab_async, "__getattr__")
    with pytest.raises(ImportError):
        exec("from modelslab_async import Clinet", {})  # noqa: S102 - a typo on purpose


def test_the_readme_examples_pass_mypy_strict(tmp_path: Path) -> None:
    """Every Python example in the README type-checks under mypy --strict."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks
    for number, block in enumerate(blocks):
        (tmp_path / f"example_{number}.py").write_text(block)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
