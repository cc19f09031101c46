"""Small private helpers shared by the public modules."""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
import tempfile
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Returns " Did you mean 'a' or 'b'?" for close matches of `name`, else ""."""
    matches = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    if not matches:
        return ""
    quoted = [f"'{m}'" for m in matches]
    return " Did you mean " + " or ".join(quoted) + "?"


def short_list(items: Iterable[str], limit: int = 12) -> str:
    """Formats up to `limit` names for an error message."""
    items = list(items)
    shown = ", ".join(f"'{i}'" for i in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown


def shape_tuple(shape) -> tuple:
    """A shape as a plain tuple of ints/None (drops nothing)."""
    return tuple(None if d is None else int(d) for d in shape)


def as_str_path(value, argname: str, expected: str) -> str:
    """`value` as a string (path-likes converted), or a TypeError naming `argname`."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(
            f"`{argname}` must be {expected}. "
            f"Received: {argname}={value!r} of type {type(value).__name__}."
        )
    return value


def directory_path(value, argname: str) -> str:
    """`value` as a str path to a directory that may not exist yet, or a clear error."""
    path = as_str_path(value, argname, "a directory path (str or os.PathLike)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"`{argname}`={path!r} exists and is a file, not a directory. Pass a "
            "directory path (it is created if missing)."
        )
    return path


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = ""):
    """Yields a temporary path next to `path`; on success it is synced and renamed to `path`.

    The rename is atomic, so `path` holds the previous file or the complete new one,
    never a partial write, even if the process is killed. On error the temporary file
    is removed and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def require_parent_directory(path: str, argname: str) -> str:
    """The directory `path` goes into; a FileNotFoundError naming `argname` if it is missing."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"The directory of `{argname}`={path!r} does not exist. Create {parent!r} first."
        )
    return parent


def require_writable(path: str, argname: str) -> None:
    """A PermissionError naming `argname` unless files can be made in directory `path`
    (or, where it does not exist yet, in its nearest existing parent, where it will be
    made). Tried by making and removing a file: permission bits do not tell (root, ACLs,
    read-only mounts)."""
    directory = os.path.abspath(path)
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
    except OSError as error:
        raise PermissionError(
            f"`{argname}`={path!r} cannot be written: making a file in {directory!r} failed "
            f"({error.strerror or error}). Pass a directory you can write to."
        ) from None
    os.close(fd)
    os.remove(probe)


def revived(config: dict, *keys: str) -> dict:
    """A copy of `config` with the Keras objects serialized under `keys` deserialized
    (Keras' deserialization consumes what it reads, so the caller's config is untouched;
    keys that are missing or hold no serialized object are left as they are)."""
    import keras

    config = copy.deepcopy(config)
    for key in keys:
        if isinstance(config.get(key), dict):
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config
