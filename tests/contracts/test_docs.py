"""The documentation site builds with `mkdocs build --strict`: every page, every example
page, and the API reference generated from the docstrings, with no broken link or
unresolved reference."""

import html
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)


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
    # Each example page shows its script: a line that only the script has is on the page.
    pages = os.path.join(ROOT, "docs", "examples")
    for page in sorted(os.listdir(pages)):
        with open(os.path.join(pages, page)) as f:
            markdown = f.read()
        snippet = re.search(r'^--8<-- "(examples/[a-z_]+\.py)"$', markdown, re.M)
        if page == "notebook.md":  # shows the notebook's cells, not a script
            assert snippet is None, page
            continue
        assert snippet is not None, f"{page} does not include its script with --8<--"
        with open(os.path.join(ROOT, snippet.group(1))) as f:
            only_in_script = [
                line.strip()
                for line in f
                if len(line.strip()) > 30 and line.strip() not in markdown
            ]
        built = (tmp_path / "examples" / page[:-3] / "index.html").read_text()
        text = html.unescape(re.sub(r"<[^>]+>", "", built))
        assert "--8<--" not in text and "--8 <" not in text, page
        assert only_in_script and only_in_script[-1] in text, (page, only_in_script[-1])
