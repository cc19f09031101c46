#!/usr/bin/env bash
# The version matrix: each older supported TensorFlow/Keras pair in a venv of its own, running
# the fast subset of the suite that touches the TF/Keras internals finetune_tf leans on
# (sources, freezing, fit, save/load, the Hub layer, every kind of model). The newest pair is
# the main suite's. The ranges in pyproject.toml are what passes here.
set -euo pipefail
cd "$(dirname "$0")/.."

# tensorflow  keras  tf-keras: the oldest TensorFlow with the oldest Keras we allow, and the
# middle pair.
PAIRS=(
    "2.19.1 3.10.0 2.19.0"
    "2.20.0 3.12.1 2.20.1"
)
SUBSET=(
    tests/model/test_backbone.py
    tests/model/test_freeze.py
    tests/model/test_lora.py
    tests/test_finetuner.py
    tests/outputs/test_saving.py
    tests/sources/test_hub.py
    tests/model/test_model_kinds.py
    tests/training/test_feature_cache.py
    tests/training/test_frozen_prefix.py
)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
for pair in "${PAIRS[@]}"; do
    read -r tensorflow keras tf_keras <<<"$pair"
    echo "=== version matrix: tensorflow==$tensorflow keras==$keras tf-keras==$tf_keras"
    venv="$root/tf$tensorflow"
    python -m venv "$venv"
    "$venv/bin/pip" install --quiet "tensorflow==$tensorflow" "keras==$keras" \
        "tf-keras==$tf_keras" "pytest>=8,<10" "pytest-xdist>=3.6,<4" -e .
    "$venv/bin/python" -c "import tensorflow as tf, keras; print('tensorflow', tf.__version__, 'keras', keras.__version__)"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=5 "${SUBSET[@]}"
done
echo "=== version matrix: all pairs passed"
