"""Tiny KerasHub backbones and presets for the tests: random weights, built in memory or
saved with `save_to_preset` in a test's directory; nothing is downloaded.

keras_hub is imported inside each function, never at import time: the version matrix has
no keras-hub, and the test files that use these skip with `pytest.importorskip("keras_hub")`.
"""

import os

import keras

from finetune_tf import Backbone


def tiny_bert(
    vocabulary_size: int = 7,
    num_layers: int = 1,
    num_heads: int = 1,
    hidden_dim: int = 8,
    max_sequence_length: int = 8,
    **kwargs,
):
    """A `keras_hub.models.BertBackbone` with an intermediate layer twice `hidden_dim`."""
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=max_sequence_length,
        **kwargs,
    )


def tiny_gpt2() -> tuple:
    """A one-block `GPT2Backbone` and its tokenizer (five tokens, one merge)."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=5,
        num_layers=1,
        num_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )
    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "Ġ": 3, "ab": 4}
    return backbone, keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["a b"])


def tiny_resnet():
    """A `ResNetBackbone` of one basic block (64 filters, stride 1)."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
    )


def tiny_preset(directory, kind: str) -> str:
    """A KerasHub preset directory in `directory` with random weights: a tiny BERT and its
    classifier preprocessor (`kind="text"`), a tiny GPT-2 and its tokenizer
    (`kind="causal"`) or a tiny ResNet and its image converter (`kind="image"`)."""
    import keras_hub

    path = os.path.join(directory, f"tiny_{kind}")
    if kind == "text":
        tiny_bert().save_to_preset(path)
        vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]
        keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocabulary), sequence_length=8
        ).save_to_preset(path)
    elif kind == "causal":
        for part in tiny_gpt2():
            part.save_to_preset(path)
    elif kind == "image":
        tiny_resnet().save_to_preset(path)
        keras_hub.layers.ResNetImageConverter(image_size=(16, 16)).save_to_preset(path)
    else:
        raise ValueError(f"kind must be 'text', 'causal' or 'image'. Received: kind={kind!r}")
    return path


def on_token_ids(bert) -> Backbone:
    """`bert` fed token ids through a one-input model (segment 0, padding where the id is
    0), as a `Backbone` of its pooled output."""
    ids = keras.Input((bert.max_sequence_length,), dtype="int32", name="ids")
    inputs = {
        "token_ids": ids,
        "segment_ids": keras.ops.zeros_like(ids),
        "padding_mask": keras.ops.not_equal(ids, 0),
    }
    return Backbone.from_model(keras.Model(ids, bert(inputs)["pooled_output"]))
