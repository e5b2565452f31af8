"""Re-run chapters in full mode and save them with their outputs: ``make chapters`` (or pass paths).

Committed notebooks carry full-mode outputs (students read them on the web); CI re-runs them in fast
mode. Cell timestamps are not recorded, so a re-run changes only what the code really changed.
"""
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=3600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    partial = path.with_name(f".{path.name}.partial")
    nbformat.write(notebook, partial)
    os.replace(partial, path)
    print(f"executed {path}")


if __name__ == "__main__":
    os.environ.pop("MINIDIFF_FAST", None)  # outputs come from the full mode
    here = Path(__file__).resolve().parent
    for name in sys.argv[1:] or sorted(p.name for p in here.glob("[0-9]*.ipynb")):
        execute((here / Path(name).name).resolve())
