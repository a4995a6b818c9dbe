"""Paths kept inside folders: a path is inside a folder when its real path (every symlink and `..`
resolved) is, so neither `../` nor a link can lead a name given through the API out of it."""

from __future__ import annotations

import os
from typing import Iterable


def real(path) -> str:
    return os.path.realpath(os.fspath(path))


def within(path, roots: Iterable) -> bool:
    """Whether `path` really lies in one of `roots` (or is one of them). A path no folder can hold (a
    NUL byte) lies in none, nor does one on another drive (Windows)."""
    try:
        target = real(path)
    except ValueError:   # embedded null byte
        return False
    for root in roots:
        try:
            root = real(root)
            if os.path.commonpath([target, root]) == root:
                return True
        except ValueError:   # another drive: not inside
            continue
    return False
