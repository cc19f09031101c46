"""examples/quickstart.ipynb runs top to bottom in a fresh Jupyter kernel (nbclient), so the
notebook never falls behind the library."""

import os

import nbformat
from nbclient import NotebookClient

NOTEBOOK = os.path.join(
    os.path.dirname(__file__), os.pardir, os.pardir, "examples", "quickstart.ipynb"
)


def test_quickstart_notebook_executes(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "confusion matrix" in text and "reloaded with identical predictions: True" in text
    accuracy = float(text.split("test accuracy ")[1].split("%")[0]) / 100
    assert accuracy > 0.7  # the recipe works from five labels per class
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the training curves and the confusion matrix, shown inline
