"""Fine-tune on a directory of images, one subfolder per class.

The layout `keras.utils.image_dataset_from_directory` reads:

    data/
      circle/   0001.png 0002.png ...
      square/   ...
      triangle/ ...

With no `--data`, the example draws such a folder itself (coloured shapes on noisy
backgrounds), so it runs offline. The model gets augmentation layers (active only while
training) and the backbone's own preprocessing; `fine_tune()` trains the head on the frozen
backbone, then the top layers. It prints the per-class report and saves the model, the
training curves and the confusion matrix.

The backbone: `--backbone MobileNetV3Small --weights imagenet` (any `keras.applications`
name, with its preprocessing) when ImageNet weights can be downloaded. Offline, the default
stands in for a download: a small CNN pretrained on other drawn shapes (crosses, rings,
diamonds, stripes) and saved to a `.keras` file, loaded with `Backbone.from_file`.

Run: python examples/image_folder.py [--data DIR] [--backbone MobileNetV3Small --weights imagenet]
"""

# %%
import argparse
import atexit
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, plot_history

SHAPES = ("circle", "square", "triangle")  # the task
SOURCE_SHAPES = ("cross", "ring", "diamond", "stripe")  # what the stand-in backbone saw


def shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
    r = rng.integers(size // 6, size // 3)
    dy, dx = abs(rows - cy), abs(cols - cx)
    return {
        "circle": lambda: dy**2 + dx**2 <= r**2,
        "square": lambda: (dy <= r) & (dx <= r),
        "triangle": lambda: (rows >= cy - r) & (rows <= cy + r) & (dx <= (rows - cy + r) / 2),
        "cross": lambda: ((dy <= r // 4) & (dx <= r)) | ((dx <= r // 4) & (dy <= r)),
        "ring": lambda: (dy**2 + dx**2 <= r**2) & (dy**2 + dx**2 >= (r * 0.6) ** 2),
        "diamond": lambda: dy + dx <= r,
        "stripe": lambda: (dy <= r // 4) & (dx <= r),
    }[shape]()


def draw(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image: noise, and the shape in a random bright colour, as uint8 RGB."""
    image = rng.integers(0, 80, size=(size, size, 3))
    image[shape_mask(shape, size, rng)] = rng.integers(120, 256, size=3)
    return image.astype("uint8")


def draw_shapes(root: str, per_class: int, size: int = 64, seed: int = 0) -> str:
    """Writes `per_class` PNG images of each shape under `root/<shape>/`; returns `root`."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        os.makedirs(os.path.join(root, shape), exist_ok=True)
        for i in range(per_class):
            png = tf.io.encode_png(tf.constant(draw(shape, size, rng)))
            tf.io.write_file(os.path.join(root, shape, f"{i:04d}.png"), png)
    return root


def pretrained_stand_in(path: str, image_size: int, seed: int) -> str:
    """A small CNN pretrained on other shapes, saved as `.keras`: a downloaded model's
    stand-in. Its preprocessing (rescaling to [0, 1]) is part of the model."""
    rng = np.random.default_rng(seed + 1)
    labels = np.arange(800) % len(SOURCE_SHAPES)
    images = np.stack([draw(SOURCE_SHAPES[k], image_size, rng) for k in labels])
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    for i, width in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    model = keras.Model(inputs, keras.layers.Dense(len(SOURCE_SHAPES), activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images.astype("float32"), labels, epochs=8, batch_size=32, verbose=0)
    model.save(path)
    return path


def main(
    data: str | None = None,
    backbone: str | None = None,
    weights: str | None = "imagenet",
    image_size: int = 64,
    per_class: int = 40,
    head_epochs: int = 20,
    epochs: int | str = 10,
    batch_size: int = 16,
    seed: int = 0,
    workdir: str | None = None,
) -> dict:
    keras.utils.set_random_seed(seed)
    if workdir is None:  # a temporary directory, removed when the script ends
        workdir = tempfile.mkdtemp(prefix="finetune_tf_image_folder_")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    if data is None:
        data = draw_shapes(os.path.join(workdir, "shapes"), per_class, seed=seed)
        print(f"drew {per_class} images per class into {data}")

    # %% 1. The data: class subfolders -> tf.data pipelines of (images, labels).
    train, validation = keras.utils.image_dataset_from_directory(
        data,
        image_size=(image_size, image_size),
        batch_size=batch_size,
        validation_split=0.25,
        subset="both",
        seed=seed,
    )
    class_names = train.class_names
    train = train.prefetch(tf.data.AUTOTUNE)
    validation = validation.cache().prefetch(tf.data.AUTOTUNE)

    # %% 2. Backbone (with its own preprocessing), head, augmentation, freeze policy.
    if backbone is None:
        path = pretrained_stand_in(os.path.join(workdir, "pretrained.keras"), image_size, seed)
        pretrained = Backbone.from_file(path, output_layer="features")
        print(f"pretrained a stand-in backbone on {', '.join(SOURCE_SHAPES)}: {path}")
    else:
        pretrained = Backbone.from_keras_applications(
            backbone, weights=weights, input_shape=(image_size, image_size, 3)
        )
    tuner = FineTuner(
        pretrained,
        Head.classifier(len(class_names), dropout=0.2),
        freeze=FreezePolicy.top(8),
        augmentation=[
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, seed=seed),
        ],
        seed=seed,
    )

    # %% 3. Head first on the frozen backbone, then the top 8 layers, gently.
    history = tuner.fine_tune(
        train,
        validation_data=validation,
        head_epochs=head_epochs,
        epochs=epochs,
        verbose=2,
    )

    # %% 4. What it achieved, per class; save the model and the pictures.
    report = tuner.report(validation, class_names=class_names)
    print(report)
    model_path = os.path.join(workdir, "shapes.keras")
    tuner.save(model_path)
    try:
        plot_history(history, path=os.path.join(workdir, "curves.png"))
        report.plot_confusion_matrix(path=os.path.join(workdir, "confusion.png"))
        print(f"saved {model_path}, curves.png and confusion.png in {workdir}")
    except ImportError:
        print(f"saved {model_path} (pip install matplotlib for the plots)")
    return {"accuracy": report["accuracy"], "class_names": class_names, "workdir": workdir}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a folder of class subfolders (default: draw one)")
    parser.add_argument("--backbone", help="a keras.applications name (default: stand-in)")
    parser.add_argument("--weights", help="with --backbone: imagenet (default) or none")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--head-epochs", type=int, default=20)
    parser.add_argument("--epochs", default="10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the model and plots here (default: a temp dir)")
    args = parser.parse_args()
    if args.weights is not None and args.backbone is None:
        parser.error(
            "--weights applies to a keras.applications backbone: pass --backbone too, e.g. "
            "--backbone MobileNetV3Small --weights imagenet (without --backbone the offline "
            "stand-in model is used)"
        )
    weights = args.weights or "imagenet"
    result = main(
        data=args.data,
        backbone=args.backbone,
        weights=None if weights == "none" else weights,
        workdir=args.workdir,
        image_size=args.image_size,
        per_class=args.per_class,
        head_epochs=args.head_epochs,
        epochs=args.epochs if args.epochs == "auto" else int(args.epochs),
        seed=args.seed,
    )
    print(f"validation accuracy: {result['accuracy']:.1%}")
