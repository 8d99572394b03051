"""Our errors, made also instances of a patched tool's own exception class.

Users of a patched tool catch that tool's exception (``except port_for.PortForException``), so
an error raised through a patch must be one, and still a ``PortleaseError``. The class is made
once per pair and pickles by name, through ``_rebuild``, because pytest-xdist carries errors
from a worker to the controller, where the class may not have been made yet.
"""

from __future__ import annotations

import importlib
import threading

from .. import errors
from ..errors import PortleaseError

_classes: dict[tuple[type[PortleaseError], type[Exception]], type[PortleaseError]] = {}
_lock = threading.Lock()


def also(error: PortleaseError, foreign: type[Exception]) -> PortleaseError:
    """``error`` as an instance of a class that subclasses both its class and ``foreign``."""
    if isinstance(error, foreign):
        return error
    combined = _combined(type(error), foreign)(*error.args)
    combined.__dict__.update(error.__dict__)
    combined.__cause__, combined.__context__ = error.__cause__, error.__context__
    return combined.with_traceback(error.__traceback__)


def _combined(ours: type[PortleaseError], foreign: type[Exception]) -> type[PortleaseError]:
    with _lock:
        cls = _classes.get((ours, foreign))
        if cls is None:
            def __reduce__(self: PortleaseError) -> object:
                return (
                    _rebuild,
                    (ours.__name__, foreign.__module__, foreign.__qualname__, self.args),
                    self.__dict__,
                )

            cls = type(ours.__name__, (ours, foreign), {"__reduce__": __reduce__})
            cls.__module__ = ours.__module__
            cls.__doc__ = f"{ours.__doc__} Also a {foreign.__module__}.{foreign.__qualname__}."
            _classes[(ours, foreign)] = cls
        return cls


def _rebuild(ours: str, module: str, qualname: str, args: tuple[object, ...]) -> PortleaseError:
    base: type[PortleaseError] = getattr(errors, ours)
    foreign: object = importlib.import_module(module)
    for part in qualname.split("."):
        foreign = getattr(foreign, part)
    assert isinstance(foreign, type) and issubclass(foreign, Exception)
    return _combined(base, foreign)(*args)
