"""The public surface is one sorted __all__, and every name in it exists."""

from __future__ import annotations

import modelslab_async
import modelslab_async.testing


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted case-insensitively and lists every public name."""
    names = modelslab_async.__all__
    assert sorted(names, key=str.casefold) == names
    public = {name for name in vars(modelslab_async) if not name.startswith("_")}
    assert public - {"annotations", "Any", "testing", "redis"} == set(names)


def test_every_exported_name_resolves() -> None:
    """Each exported name is importable from the package (testing included)."""
    for module in (modelslab_async, modelslab_async.testing):
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_version_comes_from_package_metadata() -> None:
    """__version__ is read from the installed distribution."""
    from importlib.metadata import version

    assert version("modelslab-async") == modelslab_async.__version__
