"""The documentation site builds with `mkdocs build --strict`: every page, every example
page, and the API reference generated from the docstrings, with no broken link or
unresolved reference."""

import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def test_docs_site_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "api" / "index.html").read_text()
    for name in ("FineTuner", "FineTunerClassifier", "FreezePolicy", "Report", "plot_history"):
        assert f'id="finetune_tf.{name}"' in api, name
    # Examples render as highlighted code (">>> " prompts), not as markdown quotes.
    assert api.count('<span class="gp">&gt;&gt;&gt; </span>') > 100
    example = (tmp_path / "examples" / "image_folder" / "index.html").read_text()
    assert "image_dataset_from_directory" in example  # the example's source is on its page
