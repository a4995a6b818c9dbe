"""The pack's own error type: every error the pack raises on purpose derives from `VideoLDMError`.

ComfyUI reports a failed node's exception type as `<module>.<class>` (execution.py,
`full_type_name`), and it names a custom node pack's modules after the folder it loaded them
from, so an error class of this package would tell every API client where ComfyUI is installed
("/home/.../custom_nodes/comfyui_videoldm.videoldm_core.context.ContextError"). Every subclass is
therefore reported under one neutral module name, `videoldm` ("videoldm.ContextError"), wherever
the pack is installed. The class is still a ValueError, so callers that catch bad input keep
catching it.
"""

from __future__ import annotations

import copyreg
import importlib

PUBLIC_MODULE = "videoldm"


def defined(module: str, qualname: str):
    """The object `qualname` of `module`: how an error class or error crosses a process boundary
    (a DataLoader worker, torch.multiprocessing), since pickle cannot import the neutral module
    name it is reported under."""
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def rebuilt(module: str, qualname: str, args: tuple) -> "VideoLDMError":
    return defined(module, qualname)(*args)


class ReportedNeutrally(type):
    """The class of the pack's error classes: each is reported under PUBLIC_MODULE and pickled by
    the module it is defined in."""

    def __init__(cls, name, bases, namespace, **kwargs):
        super().__init__(name, bases, namespace, **kwargs)
        cls.defined_in = namespace.get("__module__", cls.__module__)   # the importable name
        cls.__module__ = PUBLIC_MODULE


copyreg.pickle(ReportedNeutrally, lambda cls: (defined, (cls.defined_in, cls.__qualname__)))


class VideoLDMError(ValueError, metaclass=ReportedNeutrally):
    """Input, file or setting the pack refuses: the message says what was expected, what was found
    and what to do, and names no server path."""

    def __reduce__(self):
        return rebuilt, (type(self).defined_in, type(self).__qualname__, self.args)


def shown(value, limit: int = 80) -> str:
    """`value`'s repr for a message, cut to about `limit` characters with its full length named: an
    API prompt's megabyte string is not echoed back in every error."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}…{length}"
