"""Hub handles: where the SavedModel a URL, an archive or a path names is on disk.

A local SavedModel directory is used as it is; a `.tar.gz` archive of one is
extracted into tensorflow_hub's cache once; a URL goes through tensorflow_hub's own
resolver and cache (`TFHUB_CACHE_DIR`), and one already cached is served without a
network call. `HubLayer` (`sources.hub`) loads what `resolve_handle` returns.
"""

from __future__ import annotations

import hashlib
import os

from finetune_tf._utils import as_str_path
from finetune_tf.runtime.progress import say

__all__ = ["ARCHIVE_SUFFIXES", "hub_cache_dir", "is_url", "resolve_handle"]


def is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://", "gs://"))


def hub_cache_dir() -> str:
    """Where tensorflow_hub keeps resolved handles (`TFHUB_CACHE_DIR`)."""
    from tensorflow_hub import resolver

    return resolver.tfhub_cache_dir(use_temp=True)


def resolve_handle(
    handle: str | os.PathLike, argname: str = "handle", *, download: bool = True
) -> str:
    """Returns a local SavedModel directory for a Hub handle or a local path.

    Local directories are used as they are. URLs go through tensorflow_hub's
    own resolver and cache, so `TFHUB_CACHE_DIR`, proxies and a pre-filled
    cache work exactly as with `hub.load`; a URL already in the cache is
    served from it without a network call. With `download=False` (a model
    file being loaded in safe mode) a URL that is not in the cache is refused
    with a ValueError instead of fetched.
    """
    handle = as_str_path(handle, argname, "a URL or a path to a SavedModel directory")
    if not is_url(handle):
        path = os.path.abspath(os.path.expanduser(handle))
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"`{argname}` points to {handle!r}, which does not exist. Expected a "
                "SavedModel directory (containing saved_model.pb), a .tar.gz archive of "
                "one, or a https:// handle."
            )
        if os.path.isfile(path) and path.endswith(ARCHIVE_SUFFIXES):
            path = _extract_archive(path, argname)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"`{argname}`={handle!r} is not a SavedModel directory: it has no "
                "saved_model.pb. Pass the directory written by tf.saved_model.save."
            )
        return path
    import tensorflow_hub as hub

    expected = os.path.join(hub_cache_dir(), hashlib.sha1(handle.encode("utf8")).hexdigest())
    if os.path.isfile(os.path.join(expected, "saved_model.pb")):
        return expected  # what tensorflow_hub's resolver returns for a cached handle
    if not download:
        raise ValueError(
            f"Refusing to download `{argname}`={handle!r} while loading a model file in "
            f"safe mode: it is not in tensorflow_hub's cache ({expected!r} does not hold "
            "a SavedModel), and a safe load never touches the network. Fetch it yourself "
            "if you trust it (finetune_tf.Backbone.from_hub(handle) or "
            "tensorflow_hub.resolve(handle), with the same TFHUB_CACHE_DIR) and load "
            "again, or load with safe_mode=False if you trust the file's author."
        )
    cached = os.path.isdir(expected)
    if not cached:
        say(f"downloading Hub handle {handle} into {hub_cache_dir()} (once)")
    try:
        path = hub.resolve(handle)
    except Exception as error:  # tensorflow_hub raises many network error types
        raise ValueError(
            f"Could not resolve the Hub handle {argname}={handle!r}: {error}. "
            f"tensorflow_hub's cache is {hub_cache_dir()!r} (set TFHUB_CACHE_DIR to "
            f"change it); this handle is served from {expected!r} once it is there. "
            "To work offline, run tensorflow_hub.resolve(handle) on a connected machine "
            "and copy that cache directory here, or pass the path of the extracted "
            "SavedModel directory instead."
        ) from error
    if not cached:
        say(f"Hub handle {handle} is in {path}")
    return path


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _extract_archive(path: str, argname: str) -> str:
    """Extracts a compressed SavedModel into tensorflow_hub's cache, the way the
    resolver does for a downloaded one (keyed by the archive's path, size and time)."""
    from tensorflow_hub import resolver

    stat = os.stat(path)
    key = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    module_dir = resolver.create_local_module_dir(hub_cache_dir(), key)

    def extract(handle, tmp_dir):
        with open(handle, "rb") as archive:
            resolver.DownloadManager(handle).download_and_uncompress(archive, tmp_dir)

    if not os.path.isdir(module_dir):
        say(f"extracting {path} into {hub_cache_dir()} (once)")
    try:
        module_dir = resolver.atomic_download(path, extract, module_dir)
    except OSError as error:
        raise ValueError(
            f"`{argname}`={path!r} is not a readable SavedModel archive ({error}). Expected "
            "a .tar.gz made from a SavedModel directory (tar -czf model.tar.gz -C dir .)."
        ) from error
    return module_dir
