"""`keras.applications` as a source of pretrained weights.

`build_application` makes a no-top network by name, checks the `weights`
argument before Keras does, and turns Keras' bare download failure into one
`ConnectionError` that names the file to place and where.
"""

from __future__ import annotations

import os
import re

import keras

from finetune_tf._utils import did_you_mean

__all__ = ["application_names", "build_application"]


def application_names() -> list[str]:
    """All model constructors in `keras.applications` (e.g. `"ResNet50"`)."""
    return sorted(
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )


def build_application(
    name: str, *, weights: str | None, input_shape: tuple | None, **kwargs
) -> tuple[keras.Model, str]:
    """The no-top `keras.applications` network `name`, and its module (its preprocessing).

    Examples:
        >>> from finetune_tf.sources.applications import build_application
        >>> model, module = build_application("MobileNetV3Small", weights=None,
        ...                                   input_shape=(64, 64, 3))
        >>> module, model.output_shape
        ('mobilenet_v3', (None, 2, 2, 576))
    """
    names = application_names()
    if not isinstance(name, str) or name not in names:
        raise ValueError(
            f"Unknown keras.applications name={name!r}.{did_you_mean(str(name), names)} "
            f"Expected one of: {', '.join(names)}."
        )
    if "include_top" in kwargs:
        raise ValueError(
            "`include_top` is always False for a Backbone (the FineTuner adds its own "
            "head). Remove include_top= from the call."
        )
    if weights not in ("imagenet", None):
        if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(weights):
            raise FileNotFoundError(
                f"`weights`={weights!r} is neither 'imagenet', None, nor an existing "
                "weights file. Pass the path of a no-top weights file for "
                f"{name}, 'imagenet' to download them, or None for random weights."
            )
        weights = os.fspath(weights)
    constructor = getattr(keras.applications, name)
    try:
        model = constructor(include_top=False, weights=weights, input_shape=input_shape, **kwargs)
    except Exception as error:  # Keras raises a bare Exception when a download fails
        if "URL fetch failure" not in str(error):
            raise
        raise _weights_download_error(name, str(error)) from None
    return model, constructor.__module__.rsplit(".", 1)[-1]


def _keras_models_directory() -> str:
    """Where `keras.utils.get_file` keeps downloaded weights (`$KERAS_HOME/models`)."""
    from keras.src.backend import config  # the directory Keras fixed when it was imported

    home = getattr(config, "keras_home", lambda: os.path.join("~", ".keras"))()
    return os.path.join(os.path.expanduser(home), "models")


def _weights_download_error(name: str, keras_message: str) -> ConnectionError:
    """One clear error for `weights="imagenet"` without a network, naming the file to place."""
    match = re.search(r"(https?://\S+?\.(?:h5|keras))", keras_message)
    url = match.group(1) if match else None
    file = url.rsplit("/", 1)[-1] if url else f"the {name} no-top weights file"
    directory = _keras_models_directory()
    where = f" from {url}" if url else ""
    return ConnectionError(
        f"Could not download the ImageNet weights of {name}{where} "
        f"({keras_message.rsplit(' -- ', 1)[-1]}; no network, or a proxy refused it). Keras "
        f"looks for {file} in {directory} (or in /tmp/.keras/models when that is not "
        "writable). Copy it there from a machine that has a connection (or run this once "
        "where there is one), or pass weights= the path of the file, or weights=None for "
        "random initialisation."
    )
