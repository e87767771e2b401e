"""Pickling functions, arguments and results, with errors that name the culprit.

Functions go through cloudpickle once per job. A function whose module is not installed
(a script, a notebook, a project folder on ``sys.path``) is pickled *by value* so a worker
that only has the installed packages can still run it; installed modules go by reference.
"""

from __future__ import annotations

import base64
import functools
import os
import pickle
import sys
import sysconfig
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle

from .errors import InvalidArgumentType, SerializationError

PROTOCOL = 5
_INSTALLED_ROOTS = tuple(
    os.path.realpath(p)
    for p in {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    if p
)
_by_value_registered: set[str] = set()


def python_version() -> str:
    return "{}.{}.{}".format(*sys.version_info[:3])


def package_versions() -> dict[str, str]:
    """Versions that must agree between client and worker for pickles to load.

    Read once per process (``importlib.metadata`` parses each package's metadata: a few
    ms per job otherwise, as much as running a packed chunk of 1,000 short calls).
    """
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    import importlib.metadata  # here, not at the top: a worker starts faster without it

    versions = {}
    # fanout's distribution is fanout-futures (PyPI's "fanout" is another project)
    for name, dist in (("fanout", "fanout-futures"), ("cloudpickle", "cloudpickle"),
                       ("numpy", "numpy")):
        try:
            versions[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _describe(obj: object) -> str:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__} {text}"


def _module_is_installed(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        return True  # builtins and namespace oddities: leave them to cloudpickle
    return bool(os.path.realpath(path).startswith(_INSTALLED_ROOTS))


def _register_by_value(fn: Callable[..., Any]) -> None:
    """Pickle by value the not-installed modules ``fn`` and what it calls come from.

    Follows global names (and nested code) of functions into other not-installed modules,
    so a task that calls a helper from the project's own ``helpers.py`` runs on a worker
    that has only the installed packages.
    """
    seen: set[int] = set()
    todo: list[Any] = [fn]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or len(seen) > 10_000:
            continue
        seen.add(id(obj))
        module_name = getattr(obj, "__module__", None)
        if isinstance(obj, types.ModuleType):
            module_name = obj.__name__
        if not _wants_by_value(module_name):
            continue
        assert module_name is not None
        if module_name != "__main__" and module_name not in _by_value_registered:
            cloudpickle.register_pickle_by_value(sys.modules[module_name])
            _by_value_registered.add(module_name)
        if isinstance(obj, types.FunctionType):
            todo.extend(_referenced_globals(obj))


def _wants_by_value(module_name: str | None) -> bool:
    if not module_name or module_name not in sys.modules:
        return False
    if module_name == "__main__":
        return True
    return module_name.split(".")[0] != "fanout" and not _module_is_installed(module_name)


def _referenced_globals(fn: types.FunctionType) -> list[Any]:
    found = []
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        for name in code.co_names:
            if name in fn.__globals__:
                found.append(fn.__globals__[name])
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def function_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}"


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a task function once for a job; raise SerializationError naming what failed."""
    if not callable(fn):
        raise InvalidArgumentType(f"expected a callable to run as a task, got {_describe(fn)}")
    _register_by_value(fn)
    try:
        return bytes(cloudpickle.dumps(fn, protocol=PROTOCOL))
    except Exception as exc:
        culprit = _find_function_culprit(fn)
        where = f" because it references {culprit}" if culprit else ""
        raise SerializationError(
            f"function {function_name(fn)} cannot be pickled{where}: {exc}. "
            "Create such objects inside the task instead of capturing them."
        ) from exc


def _find_function_culprit(fn: Callable[..., Any]) -> str | None:
    """Best effort: which closure variable or global makes ``fn`` unpicklable."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    candidates: list[tuple[str, object]] = []
    closure = getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars, closure, strict=False):
        try:
            candidates.append((f"closure variable {name!r}", cell.cell_contents))
        except ValueError:
            continue
    fn_globals = getattr(fn, "__globals__", {})
    for name in code.co_names:
        if name in fn_globals:
            candidates.append((f"global {name!r}", fn_globals[name]))
    for label, value in candidates:
        if isinstance(value, types.ModuleType):
            continue
        try:
            cloudpickle.dumps(value, protocol=PROTOCOL)
        except Exception:
            return f"{label} ({_describe(value)})"
    return None


def dumps_initializer(initializer: Callable[..., object] | None,
                      initargs: Sequence[Any]) -> str | None:
    """``(initializer, initargs)`` pickled once, as text that fits in a job spec's JSON."""
    if initializer is None:
        return None
    if not isinstance(initargs, (tuple, list)):
        raise InvalidArgumentType(f"initargs must be a tuple, got {_describe(initargs)}")
    dumps_function(initializer)  # registers by-value modules; names what cannot be pickled
    try:
        blob = cloudpickle.dumps((initializer, tuple(initargs)), protocol=PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"initargs of initializer {function_name(initializer)} cannot be pickled: {exc}"
        ) from exc
    return base64.b64encode(blob).decode("ascii")


def loads_initializer(text: str) -> tuple[Callable[..., object], tuple[Any, ...]]:
    initializer, initargs = pickle.loads(base64.b64decode(text))
    return initializer, initargs


def dumps_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """Pickle one task's arguments; on failure name the argument that cannot go."""
    try:
        return bytes(cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=PROTOCOL))
    except Exception as exc:
        raise SerializationError(call_failure(args, kwargs, exc)) from exc


def call_failure(args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception) -> str:
    for position, value in enumerate(args):
        try:
            cloudpickle.dumps(value, protocol=PROTOCOL)
        except Exception:
            return (
                f"argument {position} ({_describe(value)}) cannot be pickled: {exc}. "
                "Pass data, or create the object inside the task."
            )
    for name, value in kwargs.items():
        try:
            cloudpickle.dumps(value, protocol=PROTOCOL)
        except Exception:
            return (
                f"keyword argument {name!r} ({_describe(value)}) cannot be pickled: {exc}. "
                "Pass data, or create the object inside the task."
            )
    return f"task arguments cannot be pickled: {exc}"


def dumps_value(value: Any) -> bytes:
    """Pickle a task's return value (on the worker)."""
    try:
        return bytes(cloudpickle.dumps(value, protocol=PROTOCOL))
    except Exception as exc:
        raise SerializationError(
            f"the task's result of type {type(value).__module__}.{type(value).__qualname__} "
            f"cannot be pickled: {exc}"
        ) from exc


def loads(data: bytes | memoryview) -> Any:
    return pickle.loads(data)

