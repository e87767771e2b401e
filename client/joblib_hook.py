"""Register fanout's joblib backend when, and only if, joblib is imported.

Importing joblib costs about half a second and it may not be installed at all, so
``import fanout`` does not import it. Instead a one-shot import hook waits for joblib's own
import and registers ``backend="fanout"`` right after it, so the order of the two imports
does not matter (as with Dask's and Ray's backends, but without a ``register_*()`` call).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence


def _register() -> None:
    from .joblib_backend import register

    register()


class _RegisteringLoader(importlib.abc.Loader):
    """joblib's own loader, followed by the registration."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = self._loader  # joblib sees its own loader, as if never wrapped
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register()


class _JoblibWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "joblib":
            return None
        uninstall()  # one shot: also keeps the lookup below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


_WATCHER = _JoblibWatcher()


def uninstall() -> None:
    if _WATCHER in sys.meta_path:
        sys.meta_path.remove(_WATCHER)


def install() -> None:
    """Register now if joblib is already imported, else when it is."""
    if sys.modules.get("joblib") is not None:
        _register()
    elif _WATCHER not in sys.meta_path:
        sys.meta_path.insert(0, _WATCHER)
