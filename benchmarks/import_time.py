"""Import cost of finetune_tf over TensorFlow + Keras, measured side by side.

Each round starts two fresh interpreters in alternation: one imports
`tensorflow` and `keras` (the floor any user pays), the other additionally
imports `finetune_tf`. It prints the median wall time of each and their
ratio; the target is a ratio <= 1.05 (finetune_tf adds no noticeable time).

Run: python benchmarks/import_time.py [--rounds 7]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

BASE = "import tensorflow, keras"
WITH_PACKAGE = "import tensorflow, keras, finetune_tf"


def timed(code: str) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main(rounds: int):
    timed(BASE)  # warm the file-system cache once
    base, package = [], []
    for _ in range(rounds):
        base.append(timed(BASE))
        package.append(timed(WITH_PACKAGE))
    b, p = statistics.median(base), statistics.median(package)
    print(f"import tensorflow, keras:              {b:.2f} s (median of {rounds})")
    print(f"import tensorflow, keras, finetune_tf: {p:.2f} s (median of {rounds})")
    print(f"ratio: {p / b:.3f} (target <= 1.05)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    main(parser.parse_args().rounds)
