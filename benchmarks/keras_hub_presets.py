"""A KerasHub preset through `FineTuner` against `keras_hub.models.TextClassifier`.

The same tiny BERT preset (examples/text_classification.py's: pretrained on movie
reviews, saved with `save_to_preset`; nothing is downloaded) and the same few-shot
restaurant reviews go through each library's default recipe:

- finetune_tf: `FineTuner(Backbone.from_preset(preset), Head.binary())` and
  `fine_tune(x, y, head_epochs, epochs)` (head first, then the encoder);
- KerasHub: `TextClassifier.from_preset(preset, num_classes=2)` with its default
  `compile()` (Adam 5e-5), the backbone frozen for the same head epochs, then unfrozen
  for as many epochs as fine_tune's encoder stage ran: the same number of steps of each.

Few labels (2 per class by default) so the task does not saturate; 20 + 10 epochs by
default, a few minutes.

One run each (tracing included, as a user waits for it), accuracy on the held-out
reviews and wall time side by side, with ratios. `--preset bert_tiny_en_uncased`
compares on the real preset (online).

Run: python benchmarks/keras_hub_presets.py [--shots 8] [--preset NAME_OR_DIR]
(not `keras_hub.py`: run as a script, that name would hide the keras_hub package.)
"""

import argparse
import importlib.util
import os
import tempfile
import time

import _common  # noqa: F401  (quiet TensorFlow logs)
import keras
import keras_hub
import numpy as np

from finetune_tf import Backbone, FineTuner, Head

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "text_classification.py")


def load_example():
    spec = importlib.util.spec_from_file_location("text_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(shots: int, preset: str | None, seed: int, head_epochs: int = 20, epochs: int = 10):
    example = load_example()
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    if preset is None:
        preset = example.save_tiny_bert_preset(os.path.join(tempfile.mkdtemp(), "bert"), rng)
    x, y = example.reviews(example.FOOD, 400, rng)
    train = np.concatenate([np.flatnonzero(y == c)[:shots] for c in (0, 1)])
    test = np.setdiff1d(np.arange(len(y)), train)

    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    tuner = FineTuner(Backbone.from_preset(preset), Head.binary(), seed=seed)
    history = tuner.fine_tune(x[train], y[train], head_epochs=head_epochs, epochs=epochs, verbose=0)
    ours_accuracy = tuner.report(x[test], y[test])["accuracy"]
    ours_time = time.perf_counter() - start
    encoder_epochs = len(history.history["loss"]) - head_epochs  # early stopping may cut it

    # The same two stages for KerasHub: the encoder frozen for the head epochs, then the
    # whole classifier at KerasHub's default learning rate for as many epochs as ours ran.
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    classifier = keras_hub.models.TextClassifier.from_preset(preset, num_classes=2)
    classifier.backbone.trainable = False
    classifier.compile()  # KerasHub's defaults: Adam(5e-5), sparse crossentropy, accuracy
    classifier.fit(x[train], y[train], epochs=head_epochs, batch_size=32, verbose=0)
    classifier.backbone.trainable = True
    classifier.compile()
    if encoder_epochs > 0:
        classifier.fit(x[train], y[train], epochs=encoder_epochs, batch_size=32, verbose=0)
    predicted = np.argmax(classifier.predict(x[test], verbose=0), axis=-1)
    theirs_accuracy = float(np.mean(predicted == y[test]))
    theirs_time = time.perf_counter() - start

    print(f"preset {preset}, {shots} labels per class, {len(test)} test reviews")
    print(f"  {'':<40} accuracy  wall time")
    ours = f"FineTuner.fine_tune ({head_epochs}+{encoder_epochs} epochs)"
    print(f"  {ours:<40} {ours_accuracy:8.3f}  {ours_time:8.1f} s")
    name = f"TextClassifier frozen+unfrozen ({head_epochs}+{encoder_epochs})"
    print(f"  {name:<40} {theirs_accuracy:8.3f}  {theirs_time:8.1f} s")
    print(
        f"  finetune_tf - KerasHub: accuracy {ours_accuracy - theirs_accuracy:+.3f}; "
        f"wall time ratio {ours_time / theirs_time:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--preset", help="a KerasHub preset (default: the tiny offline one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-epochs", type=int, default=20, help="both sides' head stage")
    parser.add_argument("--epochs", type=int, default=10, help="both sides' encoder stage")
    args = parser.parse_args()
    main(args.shots, args.preset, args.seed, args.head_epochs, args.epochs)
