"""The training state on disk: `checkpoint_dir/state.npz` and the frozen variables.

A `TrainingRun` keeps its state in one `.npz` file, `state.npz`: JSON metadata (the
format, the run's fingerprint, the position in the schedule, the history) and every
variable's value. A stage's frozen variables, which cannot change within it, are
written once to `frozen-<stage>.npz` and put back in their places when the state is
read. Every file is written to a temporary name and renamed into place
(`_utils.atomic_file`), so a kill never leaves half a state. This module reads,
validates, writes and removes those files; what goes in them is `run_state`'s.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from finetune_tf._utils import atomic_file
from finetune_tf.training.run_fingerprint import differences

__all__ = [
    "FROZEN_PREFIX",
    "STATE_FILE",
    "load_state",
    "read_state",
    "remove_frozen_files",
    "remove_state",
    "write_frozen",
    "write_state",
]

STATE_FILE = "state.npz"
FROZEN_PREFIX = "frozen-"  # frozen-<stage>.npz: a stage's frozen variables, written once
_FORMAT = 3  # 3: the run's fingerprint, model_count, stopped, params


def _save_arrays(path: str, meta: dict, values: list) -> None:
    """`meta` (JSON) and `values` in one .npz file, written atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"v{i}": np.asarray(v) for i, v in enumerate(values)}
    with atomic_file(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def read_state(directory: str) -> tuple[dict, list[np.ndarray]]:
    """The saved state in `directory`: its metadata and every variable's value, in the
    order of the model's variables (then the optimizer's), then early stopping's best
    weights; the stage's frozen variables are put back in their places.

    Examples:
        >>> import tempfile
        >>> from finetune_tf.training.state_file import _save_arrays, read_state
        >>> directory = tempfile.mkdtemp()
        >>> _save_arrays(f"{directory}/frozen-0.npz", {"indices": [1]}, [np.zeros(2)])
        >>> frozen = {"file": "frozen-0.npz", "indices": [1], "count": 3}
        >>> _save_arrays(f"{directory}/state.npz", {"frozen": frozen}, [np.ones(1), np.ones(3)])
        >>> [a.shape for a in read_state(directory)[1]]
        [(1,), (2,), (3,)]
    """
    meta, arrays = _load_arrays(os.path.join(directory, STATE_FILE))
    frozen = meta.get("frozen")
    if frozen is None:
        return meta, arrays
    header, values = _load_arrays(os.path.join(directory, frozen["file"]))
    if header["indices"] != frozen["indices"]:
        raise ValueError(f"{frozen['file']} holds the frozen variables of another state")
    stored = len(arrays) - (meta.get("best_weights") or 0)
    changed = iter(arrays[:stored])
    placed = dict(zip(frozen["indices"], values, strict=True))
    merged = [placed[i] if i in placed else next(changed) for i in range(frozen["count"])]
    return meta, merged + arrays[stored:]


def _load_arrays(path: str) -> tuple[dict, list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        count = sum(1 for key in data.files if key.startswith("v"))
        return meta, [data[f"v{i}"] for i in range(count)]


def write_state(directory: str, meta: dict, values: list) -> None:
    """Writes `directory/state.npz` (in this module's format) atomically."""
    _save_arrays(os.path.join(directory, STATE_FILE), {"format": _FORMAT, **meta}, values)


def write_frozen(directory: str, name: str, indices: list, values: list) -> None:
    """Writes a stage's frozen variables (`values`, at `indices` among all) to
    `directory/name`, a `frozen-<stage>.npz` file, atomically."""
    _save_arrays(os.path.join(directory, name), {"indices": indices}, values)


def load_state(directory: str, signature: dict) -> tuple[dict, list[np.ndarray]] | None:
    """The state saved in `directory` by the run `signature` fingerprints (see
    `read_state`), None when there is none; a ValueError names what is wrong with a
    state that cannot be read, is of another format, or is another run's."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        meta, arrays = read_state(directory)
        saved_format = meta.get("format")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        size = os.path.getsize(path)
        raise ValueError(
            f"`checkpoint_dir`={directory!r} holds a training state that cannot be "
            f"read: {path!r} ({size} bytes; {type(error).__name__}: {error}). It was "
            "not written by finetune_tf or is damaged (a full disk, a copy cut short). "
            "Delete the directory (or that file) to start the training over, or pass "
            "another checkpoint_dir."
        ) from None
    if saved_format != _FORMAT:
        raise ValueError(
            f"`checkpoint_dir`={directory!r} holds a training state in format "
            f"{saved_format!r}, written by another version of finetune_tf (this one reads "
            f"format {_FORMAT}). Delete the directory to start the training over, or pass "
            "another checkpoint_dir."
        )
    changed = differences(meta.get("signature") or {}, signature)
    if changed:
        raise ValueError(
            f"`checkpoint_dir`={directory!r} holds the state of a different training "
            f"run, not of this call; changed: {'; '.join(changed)}. Resuming it would mix "
            "two runs. To resume, call again with the same data and arguments as the "
            "interrupted call; to start over, delete the directory or pass another "
            "checkpoint_dir."
        )
    return meta, arrays


def remove_frozen_files(directory: str, keep: str | None) -> None:
    """Removes the `frozen-<stage>.npz` files of `directory`, but `keep`."""
    for name in os.listdir(directory):
        if name.startswith(FROZEN_PREFIX) and name != keep:
            os.remove(os.path.join(directory, name))


def remove_state(directory: str) -> None:
    """Removes the state of `directory`: `state.npz`, the frozen variables, and the
    temporary files a kill left half written."""
    path = os.path.join(directory, STATE_FILE)
    if os.path.exists(path):
        os.remove(path)
    remove_frozen_files(directory, keep=None)
    for name in os.listdir(directory):
        if name.startswith(".tmp-") and name.endswith(".npz"):
            os.remove(os.path.join(directory, name))
