"""Replace functions wherever their names went: every module-global binding of them, found by
identity, in the modules loaded now and in those imported until the rebinding is undone.

``from port_for import get_port`` copies the function into the importing module's globals, so
patching ``port_for.get_port`` alone misses every such user (pytest-postgresql, pytest-redis,
pytest-mysql, ``port_for.store``...). Looking the functions up by identity needs no list of who
imported them. Later imports are caught by a meta path finder that lets the real finders find the
module and wraps the loader, so that the new module's globals are rebound right after its code
ran (``exec_module``), before anyone can call through them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any


class Rebinding:
    """``install()`` replaces every binding of each key of ``replacements`` by its value;
    ``undo()`` puts back every binding that still holds a replacement, and stops watching
    imports. Both are idempotent."""

    def __init__(self, replacements: Mapping[object, object]) -> None:
        # By id: a module global may be anything, hashable or not.
        self._by_id = {id(old): (old, new) for old, new in replacements.items() if old is not new}
        self._replaced: list[tuple[dict[str, Any], str, object, object]] = []
        self._lock = threading.Lock()
        self._finder: _Finder | None = None

    @property
    def bindings(self) -> list[str]:
        """``module.name`` of every binding replaced so far."""
        with self._lock:
            return [f"{ns.get('__name__', '?')}.{name}" for ns, name, _, _ in self._replaced]

    def install(self) -> None:
        with self._lock:
            if self._finder is not None or not self._by_id:
                return
            self._finder = _Finder(self)
        sys.meta_path.insert(0, self._finder)
        for module in list(sys.modules.values()):
            self.rebind(module)

    def rebind(self, module: object) -> None:
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            return  # sys.modules may hold any object; only a namespace dict has globals
        by_id = self._by_id
        for name, value in list(namespace.items()):
            found = by_id.get(id(value))
            if found is not None and found[0] is value:
                with self._lock:
                    if self._finder is None:
                        return  # undone meanwhile
                    namespace[name] = found[1]
                    self._replaced.append((namespace, name, found[0], found[1]))

    def undo(self) -> None:
        with self._lock:
            finder, self._finder = self._finder, None
            replaced, self._replaced = self._replaced, []
        if finder is not None:
            # Identity, not ==: a finder of another Rebinding may compare equal.
            sys.meta_path[:] = [f for f in sys.meta_path if f is not finder]
        for namespace, name, old, new in reversed(replaced):
            if namespace.get(name) is new:  # someone else rebound it since: theirs stays
                namespace[name] = old


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asks the finders after it, and wraps the loader they return."""

    def __init__(self, rebinding: Rebinding) -> None:
        self._rebinding = rebinding

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        finders = list(sys.meta_path)
        try:
            after = finders[next(i for i, f in enumerate(finders) if f is self) + 1 :]
        except StopIteration:
            return None  # undone while an import was under way
        for finder in after:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if loader is not None and hasattr(loader, "exec_module"):
                spec.loader = _RebindingLoader(loader, self._rebinding)
            return spec  # type: ignore[no-any-return]
        return None


class _RebindingLoader(importlib.abc.Loader):
    """The real loader, plus a rebinding of the module's globals once its code has run. It puts
    the real loader back on the module (``__loader__``, ``__spec__.loader``) right away, so that
    nothing that inspects loaders later (importlib.resources, inspect, reload) ever sees it."""

    def __init__(self, loader: Any, rebinding: Rebinding) -> None:
        self._loader = loader
        self._rebinding = rebinding

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        self._rebinding.rebind(module)

    def __getattr__(self, name: str) -> Any:
        # get_filename, is_package, get_source, get_resource_reader...: the real loader's.
        return getattr(self._loader, name)
