"""Who writes files under several workers: the chief, and nobody else.

Under `MultiWorkerMirroredStrategy` every worker runs the same `fit`, with
the same callbacks. If they all wrote the same checkpoint path they would
race and could leave a torn file on shared storage; tf.distribute's rule is
that the chief writes the real file and the other workers write throwaway
copies. Keras 3's `ModelCheckpoint` and `BackupAndRestore` do not follow
that rule, so `chief_writes` gives non-chief workers copies of those
callbacks that write into a temporary directory (removed afterwards),
while `BackupAndRestore` still restores from the real backup, as the chief
does, so that every worker resumes from the same epoch. `chief_path` does
the same for the files of `save` and `export`. Whether this process is the
chief is the caller's to say (`Placement.is_chief`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile

import keras

__all__ = ["WORKER_TEMP_PREFIX", "chief_path", "chief_writes"]

WORKER_TEMP_PREFIX = "finetune_tf_worker_"


def _redirected_model_checkpoint(callback, directory: str):
    clone = copy.copy(callback)
    clone.filepath = os.path.join(directory, os.path.basename(os.fspath(callback.filepath)))
    return clone


def _redirected_backup(callback, directory: str):
    """A copy that restores from the real backup but writes under `directory`."""
    clone = copy.copy(callback)
    # Paths Keras derives from `backup_dir` in __init__; take them from a fresh instance.
    fresh = keras.callbacks.BackupAndRestore(directory)
    written_paths = {
        name: value
        for name, value in vars(fresh).items()
        if isinstance(value, str) and value.startswith(directory)
    }
    restore = clone.on_train_begin

    def on_train_begin(logs=None):
        restore(logs)
        for name, value in written_paths.items():
            setattr(clone, name, value)

    clone.on_train_begin = on_train_begin
    return clone


def _redirected(callbacks, directory: str) -> list:
    redirected = []
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.ModelCheckpoint):
            callback = _redirected_model_checkpoint(callback, directory)
        elif isinstance(callback, keras.callbacks.BackupAndRestore):
            callback = _redirected_backup(callback, directory)
        redirected.append(callback)
    return redirected


@contextlib.contextmanager
def chief_path(chief: bool, path):
    """Yields where this worker writes a file the user asked for at `path`.

    The chief writes to `path`; every other multi-worker writes a throwaway
    copy (tf.distribute expects every worker to take part in a save) into a
    temporary directory removed on exit, under the same file name so the same
    checks apply.

    Examples:
        >>> import tensorflow as tf
        >>> from finetune_tf.runtime.chief import chief_path
        >>> with chief_path(True, "tuned.keras") as target:
        ...     target  # one process: it is the chief
        'tuned.keras'
    """
    if chief:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=WORKER_TEMP_PREFIX) as directory:
        yield os.path.join(directory, os.path.basename(os.fspath(path)))


@contextlib.contextmanager
def chief_writes(chief: bool, callbacks: list):
    """Yields `callbacks` that write checkpoints on the chief only.

    On a non-chief multi-worker, `ModelCheckpoint` and `BackupAndRestore`
    callbacks are replaced by copies writing into a temporary directory that
    is removed on exit; the user's callback objects are left untouched.
    Elsewhere it yields `callbacks` as they are.

    Examples:
        >>> import keras
        >>> from finetune_tf.runtime.chief import chief_writes
        >>> with chief_writes(True, [keras.callbacks.ModelCheckpoint("best.keras")]) as written:
        ...     written[0].filepath  # one process: it is the chief
        'best.keras'
    """
    if not callbacks or chief:
        yield callbacks
        return
    directory = tempfile.mkdtemp(prefix=WORKER_TEMP_PREFIX)
    try:
        yield _redirected(callbacks, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
