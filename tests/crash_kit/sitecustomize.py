"""Crash injection for ``tests/test_crash_points.py``: the process dies at a named point.

Put this folder first on a subprocess's ``PYTHONPATH`` and set ``IMG1688_CRASH_AT`` to
``<point>`` or ``<point>:<nth>`` (several, separated by commas, arm each). Python imports this
module at start-up (``site`` does); it wraps the function of each point as its module is
imported, so that the nth time the point is reached the process writes
``CRASH AT <point> (#<nth>)`` to stderr and ends with ``os._exit(137)``: no ``finally``, no
``atexit``, no flush, from whatever thread it is in (the Parquet parts are written in a worker
thread: ``os._exit`` ends the whole process all the same).

Nothing here is in the engine: the points wrap module attributes from outside. The variable is
removed from the environment once read, so the processes the engine starts (the preprocessing
pool) are not armed. An unknown point or a bad count ends the process at once with exit 70
rather than letting a run pass uncrashed.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

VARIABLE = "IMG1688_CRASH_AT"
CRASH_EXIT = 137
"""What a shell reports for a process killed by SIGKILL (128 + 9)."""
USAGE_EXIT = 70


@dataclass(frozen=True)
class Point:
    """Where to die: ``module.attribute`` (``Class.method`` allowed), before or after the call,
    and only for calls that ``applies`` accepts (by their arguments)."""

    module: str
    attribute: str
    when: Literal["before", "after"]
    applies: Callable[[Sequence[Any]], bool] = lambda args: True


def _parquet_destination(args: Sequence[Any]) -> bool:
    """``os.replace(temp, final)`` or ``S3Store.write_bytes(self, key, data)`` to a part."""
    return len(args) >= 2 and str(args[1]).endswith(".parquet")


def _named(name: str, argument: int = 0) -> Callable[[Sequence[Any]], bool]:
    """Calls whose path argument (by position) is a file called ``name``."""
    return lambda args: len(args) > argument and os.path.basename(str(args[argument])) == name


POINTS: dict[str, Point] = {
    # A part's temporary file is written and fsynced; its rename has not happened.
    "written-not-renamed": Point("os", "replace", "before", _parquet_destination),
    # A part is under its final name; the commit that registers it has not happened.
    "renamed-not-registered": Point("os", "replace", "after", _parquet_destination),
    # Both parts of a batch (or of a re-clean) are renamed; the registering commit is next.
    "before-register": Point("engine.state", "StateStore.exported", "before"),
    # The commit that registered parts (a re-clean's swap) is done; what follows it is not.
    "after-register": Point("engine.state", "StateStore.exported", "after"),
    # Every photo is exported and registered; manifest.json is not written.
    "before-manifest": Point("engine.feed", "Feed.mark_complete", "before"),
    # manifest.json's temporary is written and fsynced; its rename has not happened.
    "manifest-temp-not-renamed": Point("os", "replace", "before", _named("manifest.json", 1)),
    # manifest.json is written; _SUCCESS is not.
    "manifest-no-success": Point(
        "engine.storage", "LocalStore.write_bytes", "before", _named("_SUCCESS", 1)
    ),
    # The same points on an s3:// feed (one upload per file, no temporary, no rename):
    # a part is uploaded under its final key; the commit that registers it has not happened.
    "uploaded-not-registered": Point(
        "engine.storage", "S3Store.write_bytes", "after", _parquet_destination
    ),
    # manifest.json is uploaded; _SUCCESS is not.
    "s3-manifest-no-success": Point(
        "engine.storage", "S3Store.write_bytes", "before", _named("_SUCCESS", 1)
    ),
    # manifest.json and _SUCCESS are written; the run is not recorded complete.
    "success-not-recorded": Point("engine.feed", "Feed.mark_complete", "after"),
    # An earlier run's same-day parts are unregistered; their files are not deleted.
    "superseded-not-deleted": Point("engine.state", "StateStore.drop_parts", "after"),
    # The start-up clean-up of orphans and temporaries is done; nothing new is written yet.
    "after-orphan-cleanup": Point("engine.feed", "Feed.remove_orphans", "after"),
    # A completed run's compacted files are written; the commit that swaps them in is not.
    "compacted-not-registered": Point("engine.state", "StateStore.replace_parts", "before"),
    # Compaction's swap is committed; the small parts' files are not deleted.
    "compaction-registered-not-deleted": Point("engine.state", "StateStore.replace_parts", "after"),
    # A run is committed to a Delta table; neither the other tables nor the checkpoints know.
    "delta-committed-not-recorded": Point("engine.delta", "DeltaTables.commit", "after"),
}


def _die(point: str, nth: int) -> None:
    os.write(2, f"CRASH AT {point} (#{nth})\n".encode())
    os._exit(CRASH_EXIT)


def _wrap(name: str, point: Point, nth: int, original: Callable[..., Any]) -> Callable[..., Any]:
    reached = 0

    @functools.wraps(original)
    def crashing(*args: Any, **kwargs: Any) -> Any:
        nonlocal reached
        if not point.applies(args):
            return original(*args, **kwargs)
        # Parts are written in worker threads, but one at a time: no lock needed for the count.
        reached += 1
        if reached == nth and point.when == "before":
            _die(name, nth)
        result = original(*args, **kwargs)
        if reached == nth:
            _die(name, nth)
        return result

    return crashing


def _install(module: ModuleType, name: str, point: Point, nth: int) -> None:
    *owners, attribute = point.attribute.split(".")
    owner: Any = module
    for part in owners:
        owner = getattr(owner, part)
    setattr(owner, attribute, _wrap(name, point, nth, getattr(owner, attribute)))


_PENDING: dict[str, list[Callable[[ModuleType], None]]] = {}
"""Installs waiting for their module to be imported, by module name."""


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs the pending installs of a module right after it is executed, wherever it is first
    imported, without importing it earlier than the engine would."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        installs = _PENDING.pop(fullname, None)
        if installs is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if finder is not self and find else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            _refuse(f"cannot wrap {fullname}: its loader has no exec_module")
            return None
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            for install in installs:
                install(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _refuse(message: str) -> None:
    os.write(2, f"crash kit: {message}\n".encode())
    os._exit(USAGE_EXIT)


def _arm(spec: str) -> None:
    name, _, count = spec.partition(":")
    point = POINTS.get(name)
    if point is None:
        _refuse(f"unknown point {name!r}; known: {', '.join(POINTS)}")
        return
    if count and not (count.isdigit() and int(count) >= 1):
        _refuse(f"bad count {count!r} in {VARIABLE}")
    nth = int(count or 1)
    os.write(2, f"crash kit armed: {name} (#{nth})\n".encode())

    def install(module: ModuleType) -> None:
        _install(module, name, point, nth)

    if point.module in sys.modules:
        install(sys.modules[point.module])
    else:
        _PENDING.setdefault(point.module, []).append(install)


_value = os.environ.pop(VARIABLE, None)
for _spec in (_value or "").split(","):
    if _spec:
        _arm(_spec)
if _PENDING:
    sys.meta_path.insert(0, _AfterImport())
