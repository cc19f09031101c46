"""Multi-worker fine-tuning on one machine: the same script, N worker processes.

Run without TF_CONFIG, it is the launcher: it "downloads" a pretrained model
(pretrains the quickstart's small CNN on digits 0-4 and saves it), picks free
ports on 127.0.0.1 and starts itself N times, each with its own TF_CONFIG, as a
cluster manager (Slurm, Kubernetes, ...) would on N machines. Run with TF_CONFIG,
it is a worker: `FineTuner(strategy="auto")` finds the cluster and trains under
MultiWorkerMirroredStrategy; nothing else in the training code changes. The
chief prints the result and writes the model; the other workers write nothing.

Run: python examples/multi_worker.py [--workers 2] [--head-epochs 30] [--epochs auto]
"""

# %%
import argparse
import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.datasets import load_digits

# A worker imports finetune_tf before any TensorFlow work, so that it can create the
# multi-worker strategy (TensorFlow allows that only before its runtime starts).
import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head

TIMEOUT = 600  # seconds the launcher waits for its workers


def digits(target: bool):
    data = load_digits()
    images, labels = data.images[..., None].astype("float32"), data.target
    keep = labels >= 5 if target else labels < 5
    return images[keep], labels[keep] - (5 if target else 0)


def worker(pretrained: str, head_epochs: int, epochs, output: str) -> None:
    x, y = digits(target=True)
    rng = np.random.default_rng(0)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), 10, replace=False) for c in range(5)]
    )
    test = np.setdiff1d(np.arange(len(y)), train)
    tuner = FineTuner(
        Backbone.from_file(pretrained, output_layer="features"),
        Head.classifier(5, dropout=0.2),
        freeze=FreezePolicy.none(),
    )
    chief = finetune_tf.runtime.devices.is_chief(tuner.strategy)
    tuner.fine_tune(
        x[train], y[train], head_epochs=head_epochs, epochs=epochs, verbose=2 if chief else 0
    )
    _, accuracy = tuner.evaluate(x[test], y[test], verbose=0)
    tuner.save(output)  # the chief writes it; the other workers write a throwaway copy
    if chief:
        print(f"{tuner.strategy.num_replicas_in_sync} workers: test accuracy {accuracy:.1%}")
        print(f"saved to {output}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workers: int, head_epochs: int, epochs, workdir: str | None = None) -> list[str]:
    """Pretrains, starts `workers` copies of this script on localhost; returns their outputs."""
    import keras

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from quickstart import build_cnn

    if workdir is None:  # a temporary directory, removed when the script ends
        workdir = tempfile.mkdtemp(prefix="finetune_tf_multi_worker_")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    keras.utils.set_random_seed(0)
    pretrained = build_cnn(5)
    pretrained.compile("adam", "sparse_categorical_crossentropy")
    pretrained.fit(*digits(target=False), epochs=20, verbose=0)
    path = os.path.join(workdir, "pretrained.keras")
    pretrained.save(path)

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    args = [path, str(head_epochs), str(epochs), os.path.join(workdir, "tuned.keras")]
    processes = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", *args],
            env={
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(workers)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT)[0])
    finally:
        for process in processes:  # never leave a worker behind
            if process.poll() is None:
                process.kill()
                process.communicate()
    for i, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        if process.returncode != 0:
            raise RuntimeError(f"worker {i} failed (exit {process.returncode}):\n{output[-3000:]}")
    print(outputs[0], end="")
    return outputs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--epochs", default="auto")
    parser.add_argument("--worker", nargs=4, metavar=("PRETRAINED", "HEAD", "EPOCHS", "OUT"))
    args = parser.parse_args()
    if args.worker:
        pretrained, head_epochs, epochs, output = args.worker
        worker(pretrained, int(head_epochs), epochs if epochs == "auto" else int(epochs), output)
    else:
        epochs = args.epochs if args.epochs == "auto" else int(args.epochs)
        launch(args.workers, args.head_epochs, epochs)
