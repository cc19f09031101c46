"""Checkpoints: resuming an interrupted `fit`, and the last good weights.

`fit(..., checkpoint_dir=d)` (also `fine_tune` and staged schedules) keeps a
`TrainingRun`: at the end of every epoch it snapshots the model's variables
(random-stream states included), the optimizer's state, the position in the
schedule (stage and epoch), the history so far and the state of the stage's
early stopping, and writes them to `d/state.npz` through a temporary file
and an atomic rename (the files are `state_file`'s). The same call after a
crash restores them and goes on from the epoch after the last one completed;
when the call returns normally the state is removed, as
`keras.callbacks.BackupAndRestore` does. The state holds the fingerprint of
the call (`run_fingerprint`); another call is refused, naming what changed.
Without a directory the snapshot stays in memory, where it serves the
non-finite-loss guard: a NaN or inf loss stops training, the model gets its
last good weights back, and `fit` raises `FloatingPointError`.

Under several workers only the chief writes the state (`runtime.chief`).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from finetune_tf._utils import directory_path, require_parent_directory, require_writable
from finetune_tf.training.state_file import (
    FROZEN_PREFIX,
    STATE_FILE,
    load_state,
    read_state,
    remove_frozen_files,
    remove_state,
    write_frozen,
    write_state,
)

__all__ = [
    # FROZEN_PREFIX, STATE_FILE and read_state live in `state_file`; named here too for
    # 0.2's `finetune_tf.checkpoint` path (`_aliases`), whose public names they were.
    "FROZEN_PREFIX",
    "STATE_FILE",
    "TrainingRun",
    "check_checkpoint_dir",
    "read_state",
]


def _variables(model: keras.Model, with_optimizer: bool, changeable_only: bool = False) -> list:
    """The model's variables (and its optimizer's, once built).

    `changeable_only`: leave out the variables of frozen layers, which `fit`
    cannot change (their weights get no gradient and frozen BatchNorm runs in
    inference mode). A frozen backbone is most of a model, so the NaN guard's
    per-epoch snapshot and the per-epoch state file then hold only the head's
    few weights (the frozen ones are written once a stage).
    """
    variables = list(model.variables)
    if changeable_only:
        frozen = set()
        for layer in model._flatten_layers(include_self=False):
            if not layer.trainable:
                frozen.update(id(v) for v in layer.variables)
        variables = [v for v in variables if id(v) not in frozen]
    optimizer = getattr(model, "optimizer", None)  # none before the model is compiled
    if with_optimizer and optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    return variables


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _values(variables: list) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in variables]


class TrainingRun(keras.callbacks.Callback):
    """The progress of one `fit` call: snapshots, resumption, and the NaN guard.

    One instance serves every stage of the call; `FineTuner.fit` appends it
    as the last callback of each stage (after the stage's early stopping,
    whose state it saves and restores).

    A saved state is read when the run is created but put back only when the
    stage it belongs to is about to train (`restore_model`): then the model is
    compiled for that stage, and its frozen layers are as that stage froze them.
    The optimizer's state follows once `fit` has built the optimizer.

    Args:
        model: the `keras.Model` that trains (`tuner.model`).
        directory: str or None. Where to keep the state on disk.
        chief: bool. Whether this process writes (a non-chief worker does not).
        signature: JSON-able fingerprint of the call (`training.run_fingerprint`);
            a saved state made by another call is refused rather than mixed in.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf.training.run_state import TrainingRun
        >>> inputs = keras.Input((2,))
        >>> model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
        >>> model.compile("sgd", "mse")
        >>> run = TrainingRun(model, None, None, {"epochs": 2})
        >>> run.begin_stage(0, "fit", 0)
        >>> model.fit(np.ones((4, 2)), np.ones(4), epochs=2, callbacks=[run], verbose=0).epoch
        [0, 1]
        >>> run.history["stage"]
        ['fit', 'fit']
    """

    def __init__(self, model, directory, chief: bool, signature: dict):
        super().__init__()
        self.full_model = model
        self.directory = directory
        self.signature = json.loads(json.dumps(signature))
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []  # the epoch numbers of `history`
        self.resume: dict | None = None  # the saved position, if any
        self._saved: list[np.ndarray] | None = None  # the saved values, until restored
        self._pending: list[np.ndarray] | None = None  # the optimizer's, once fit built it
        self._resume_callbacks = False  # early stopping's state goes back at train begin
        self._best_weights: list[np.ndarray] | None = None  # early stopping's, saved
        # The NaN guard's last good state: (variables, their values at the last good epoch).
        self._last_good: tuple[list, list[np.ndarray]] | None = None
        self.failure: str | None = None
        self.early_stopping: keras.callbacks.EarlyStopping | None = None
        self.stage, self.stage_name, self.stage_start = 0, "fit", 0
        self.params_seen: dict = {}  # Keras' params of the last epoch (epochs, steps, ...)
        # Only the chief writes the state; every worker reads it to resume.
        self._writes = directory is not None and chief
        self._frozen_written: tuple | None = None  # (file, indices) written this call
        if directory is not None:
            self._read()

    # -- where the state lives --

    @property
    def path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    def _read(self):
        saved = load_state(self.directory, self.signature)
        if saved is None:
            return
        meta, arrays = saved
        self.resume = meta
        self.history, self.epochs = meta["history"], meta["epochs"]
        self.params_seen = meta.get("params") or {}
        self._saved = arrays

    def _write(self, epoch: int, with_optimizer: bool, values: list, frozen: dict | None = None):
        meta = {
            "signature": self.signature,
            "stage": self.stage,
            "stage_start": self.stage_start,
            "epoch": epoch,
            "optimizer": with_optimizer,
            # Whether a callback (early stopping) ended the stage at this epoch.
            "stopped": bool(with_optimizer and getattr(self.model, "stop_training", False)),
            "params": self.params_seen,
            "history": self.history,
            "epochs": self.epochs,
            "count": len(values) if frozen is None else frozen["count"],
            "model_count": len(self.full_model.variables),
            "frozen": frozen,
            "early_stopping": self._early_stopping_state(),
        }
        if self.early_stopping is not None and self.early_stopping.best_weights is not None:
            meta["best_weights"] = len(self.early_stopping.best_weights)
            values = values + list(self.early_stopping.best_weights)
        write_state(self.directory, meta, values)
        self._remove_frozen_files(keep=None if frozen is None else frozen["file"])

    def _remove_frozen_files(self, keep: str | None):
        remove_frozen_files(self.directory, keep)
        if keep is None:
            self._frozen_written = None

    def finish(self):
        """The call completed: its state is no longer needed (nor what a kill left half
        written)."""
        if self._writes and os.path.isdir(self.directory):
            remove_state(self.directory)
            self._frozen_written = None

    # -- stages --

    def begin_stage(self, index: int, name: str, start: int, early_stopping=None):
        """Called before each stage's `model.fit`."""
        self.stage, self.stage_name, self.stage_start = index, name, start
        self.early_stopping = early_stopping

    def end_stage(self, next_index: int, next_start: int, write: bool = True):
        """Called after a stage: saves the weights it ended with, for the next stage
        (`write=False` after the last stage, whose epoch state is what a kill before
        `finish` resumes from)."""
        self.stage, self.stage_start = next_index, next_start
        self.early_stopping = None
        if self._writes and write:
            self._write(next_start, False, self._snapshot(False))

    def resumes(self, index: int) -> bool:
        """Whether the saved state is in stage `index`, not yet put back."""
        return self._saved is not None and self.resume["stage"] == index

    def stage_ended(self, stage_end: int) -> bool:
        """Whether the saved stage had ended (early stopping, or its last epoch done)."""
        meta = self.resume
        return bool(meta["optimizer"] and (meta.get("stopped") or meta["epoch"] >= stage_end))

    def restore_model(self):
        """Puts the saved model variables back, before the saved stage trains (compiled
        and frozen for it); the optimizer's state and early stopping's follow at train
        begin, once `fit` has built the optimizer."""
        meta, values = self.resume, self._saved
        self._saved = None
        variables = list(self.full_model.variables)
        count = meta["model_count"]
        self._check(variables, values[:count], "variables")
        for variable, value in zip(variables, values[:count], strict=True):
            variable.assign(value)
        if meta["optimizer"]:
            self._pending = values[count:]
            self._resume_callbacks = True

    def restore_ended_stage(self) -> int:
        """For a saved stage that had ended: the model as that stage left it (with early
        stopping's best weights, as `EarlyStopping.on_train_end` sets them), without
        training; returns the epoch the next stage starts at."""
        self.restore_model()
        self._restore_optimizer()
        self._restore_early_stopping()
        es = self.early_stopping
        if es is not None and es.restore_best_weights and es.best_weights is not None:
            self.full_model.set_weights(es.best_weights)
        return self.resume["epoch"]

    def _check(self, variables: list, values: list, what: str):
        if len(variables) != len(values) or any(
            tuple(v.shape) != a.shape for v, a in zip(variables, values, strict=False)
        ):
            raise ValueError(
                f"`checkpoint_dir`={self.directory!r} holds the state of a model with other "
                f"{what} ({len(values)} saved, {len(variables)} here). Resume with the same "
                "FineTuner construction, or pass a new directory to start over."
            )

    def _restore_optimizer(self):
        values, self._pending = self._pending, None
        if values is None:
            return
        count = len(values) - (self.resume.get("best_weights") or 0)
        optimizer = self.full_model.optimizer
        if not optimizer.built:
            optimizer.build(self.full_model.trainable_variables)  # as BackupAndRestore does
        variables = list(optimizer.variables)
        self._check(variables, values[:count], "optimizer variables")
        for variable, value in zip(variables, values[:count], strict=True):
            variable.assign(value)
        self._best_weights = list(values[count:])

    def _restore_early_stopping(self):
        if not self._resume_callbacks:
            return
        self._resume_callbacks = False
        es, saved = self.early_stopping, self.resume.get("early_stopping")
        if es is not None and saved is not None:
            es.wait, es.best, es.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
            if self.resume.get("best_weights"):
                es.best_weights = self._best_weights

    def _snapshot(self, with_optimizer: bool) -> list[np.ndarray]:
        return _values(_variables(self.full_model, with_optimizer))

    def _remember_good_state(self):
        """Snapshot for the NaN guard (and the state file): what fit can change."""
        variables = _variables(self.full_model, True, changeable_only=True)
        self._last_good = (variables, _values(variables))

    def _write_epoch(self, epoch: int):
        """The state after an epoch: what changed, plus the frozen variables once a stage.

        Frozen layers cannot change within a stage, so their values (a frozen backbone:
        most of the model) go to `frozen-<stage>.npz` once, before the first state that
        refers to them; each epoch then writes only the trainable part and the optimizer.
        """
        everything = _variables(self.full_model, True)
        changeable = {id(v) for v in self._last_good[0]}
        indices = [i for i, v in enumerate(everything) if id(v) not in changeable]
        name = f"{FROZEN_PREFIX}{self.stage}.npz"
        if self._frozen_written != (name, indices):
            values = _values([everything[i] for i in indices])
            write_frozen(self.directory, name, indices, values)
            self._frozen_written = (name, indices)
        frozen = {"file": name, "indices": indices, "count": len(everything)}
        self._write(epoch, True, self._last_good[1], frozen=frozen)

    def _early_stopping_state(self):
        es = self.early_stopping
        if es is None:
            return None
        best = None if es.best is None else float(es.best)
        return {"wait": int(es.wait), "best": best, "best_epoch": int(es.best_epoch)}

    # -- Keras hooks --

    def on_train_begin(self, logs=None):
        # After every callback before this one (early stopping resets itself here).
        self._restore_optimizer()
        self._restore_early_stopping()
        self._remember_good_state()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.failure is None:
            self.failure = f"batch {batch}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if self.failure is None and loss is not None and not np.isfinite(float(loss)):
            self.failure = "the end"
        if self.failure is not None:
            self.failure = (
                f"The loss became {float(loss) if loss is not None else 'non-finite'} in "
                f"epoch {epoch} ({self.failure} of it), stage {self.stage_name!r}"
            )
            for variable, value in zip(*self._last_good, strict=True):
                variable.assign(value)
            self.full_model.stop_training = self.model.stop_training = True
            return
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.history.setdefault("stage", []).append(self.stage_name)
        self.epochs.append(epoch)
        self.params_seen = {k: v for k, v in (self.params or {}).items() if _plain(v)}
        self._remember_good_state()
        if self._writes:
            self._write_epoch(epoch + 1)

    def as_history(self, stages: bool) -> keras.callbacks.History:
        """Every epoch of the call (those before a resumption too) as one Keras `History`."""
        history = keras.callbacks.History()
        history.set_model(self.full_model)
        history.history = {k: list(v) for k, v in self.history.items() if stages or k != "stage"}
        history.epoch = list(self.epochs)
        return history

    def raise_if_failed(self, history: keras.callbacks.History):
        if self.failure is None:
            return
        kept = " and in `checkpoint_dir`" if self.directory is not None else ""
        error = FloatingPointError(
            f"{self.failure}: training stopped. The model holds the weights of the last "
            f"epoch that ended with a finite loss{kept}. Common causes: a learning rate too "
            "high (try tuner.find_learning_rate()), NaN or inf in the inputs or labels, or "
            'float16 overflow (try mixed_precision=None or "mixed_bfloat16").'
        )
        error.history = history
        raise error


def check_checkpoint_dir(value) -> str | None:
    """`checkpoint_dir` as a str path (created if missing), or a clear error."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and not os.fspath(value):
        raise ValueError(
            "`checkpoint_dir` is an empty path. Pass the directory to keep the training "
            "state in, e.g. checkpoint_dir='checkpoints/run1', or None not to keep it."
        )
    path = directory_path(value, "checkpoint_dir")
    require_parent_directory(path, "checkpoint_dir")
    require_writable(path, "checkpoint_dir")
    return path
