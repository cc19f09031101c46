"""FreezePolicy on a KerasHub backbone: bottom(n) and top(k) count transformer blocks, and
LoRA adapts KerasHub's own targets. A tiny BertBackbone, built in memory, fed token ids
through a one-input model (the version matrix has no keras-hub: it skips this file)."""

import keras
import numpy as np
import pytest

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
from tests._tiny_keras_hub import on_token_ids, tiny_bert

keras_hub = pytest.importorskip("keras_hub")

LENGTH = 16


def bert_backbone() -> Backbone:
    keras.utils.set_random_seed(0)
    bert = tiny_bert(50, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=LENGTH)
    return on_token_ids(bert)


def trainable_names(backbone):
    return [layer.name for layer in backbone.layers if layer.trainable]


@pytest.fixture(scope="module")
def bert():
    return bert_backbone()


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    return rng.integers(1, 50, size=(24, LENGTH)).astype("int32"), np.arange(24) % 3


def test_bottom_and_top_count_transformer_blocks(bert):
    report = FreezePolicy.bottom(1).apply(bert)
    assert trainable_names(bert) == ["transformer_layer_1", "pooled_dense"]
    assert {"token_embedding", "embeddings_layer_norm", "transformer_layer_0"} <= set(
        report.frozen_layers
    )  # the embeddings and their LayerNorm sit below block 0
    assert (report.unit, report.blocks) == ("blocks", 2)
    assert str(report).startswith("FreezePolicy.bottom(1) (counted in transformer blocks: 2):")
    # Found by type: its name ("bert_backbone_5") depends on the models made before it.
    (hub_backbone,) = [
        layer for layer in bert.model.layers if isinstance(layer, keras_hub.models.Backbone)
    ]
    first, second = hub_backbone.transformer_layers
    assert first.trainable_weights == [] and second.trainable_weights

    assert FreezePolicy.top(1).apply(bert).frozen_layers == report.frozen_layers
    FreezePolicy.bottom(0).apply(bert)
    assert trainable_names(bert) == ["transformer_layer_0", "transformer_layer_1", "pooled_dense"]
    assert FreezePolicy.top(0).apply(bert).trainable_layers == ["pooled_dense"]
    with pytest.raises(
        ValueError, match=r"n=3, but the backbone has 2 transformer blocks.*gradual_unfreezing\(2\)"
    ):
        FreezePolicy.bottom(3).apply(bert)
    assert trainable_names(bert) == ["pooled_dense"]  # a refused policy changes nothing
    # Name-based policies still count layers.
    assert FreezePolicy.until("transformer_layer_0").apply(bert).unit == "layers"


def test_lora_trains_kerashub_targets_only_and_round_trips(tokens, tmp_path):
    x, y = tokens
    tuner = FineTuner(bert_backbone(), Head.classifier(3), freeze=FreezePolicy.lora(4), seed=0)
    report = tuner.freeze_report
    assert sorted(report.trainable_layers) == [
        f"transformer_layer_{i}/self_attention_layer/{name}"
        for i in (0, 1)
        for name in ("query", "value")
    ]  # KerasHub's default_lora_layer_names(): the query and value projections
    # Each (16, 2, 8) kernel: A (16, 2, 4) and B (4, 8).
    assert report.adapter_params == 4 * (128 + 32) == report.trainable_params
    assert report.trainable_fraction == pytest.approx(640 / 5840)
    assert "LoRA rank 4 on 4 layers | adapter params 640 / backbone params 5,840" in str(report)

    # KerasHub's own LoRA API sees the adapters.
    (bert,) = [layer for layer in tuner.backbone.model.layers if "bert" in layer.name]
    bert.save_lora_weights(str(tmp_path / "adapters.lora.h5"))
    assert (bert._lora_rank, len(bert._lora_enabled_layers)) == (4, 4)

    before = {w.path: w.numpy().copy() for w in tuner.model.weights}
    tuner.compile(run_eagerly=True)  # tracing BERT's train step costs seconds; eager, less
    tuner.fine_tune(x, y, head_epochs=1, epochs=1, batch_size=8, verbose=0)
    moved = [w.path for w in tuner.model.weights if not np.array_equal(before[w.path], w.numpy())]
    assert {p.rsplit("/", 1)[-1] for p in moved if "backbone" in p or "layer" in p} == {
        "lora_kernel_a",
        "lora_kernel_b",
    }
    assert len([p for p in moved if "lora_kernel" in p]) == 8
    assert any(p.startswith("predictions/") for p in moved)

    path = str(tmp_path / "bert.keras")
    tuner.save(path)
    expected = tuner.predict(x, verbose=0)
    again = FineTuner.load(path)
    assert again.freeze == FreezePolicy.lora(4)
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, atol=1e-5)

    tuner.merge_lora()
    assert not [w.path for w in tuner.model.weights if "lora" in w.path]
    np.testing.assert_allclose(tuner.predict(x, verbose=0), expected, atol=1e-5)
