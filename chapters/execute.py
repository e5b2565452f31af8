"""Re-run chapters in full mode and save them with their outputs: ``make chapters`` (or pass paths).

Committed notebooks carry full-mode outputs (students read them on the web); CI re-runs them in fast
mode. Cell timestamps are not recorded, so a re-run changes only what the code really changed.
"""
import html
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def widget_boxes(notebook):
    """Every output that displays a box widget, as (output, the box's saved state, its children's):
    the saved widget state is what a static reader's text fallback can be written from."""
    state = notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            box = state.get(view["model_id"]) if view else None
            if box:
                yield output, box, [state.get(child.removeprefix("IPY_MODEL_"), {})
                                    for child in box["state"].get("children", [])]


def finish_progress_bars(notebook) -> None:
    """A tqdm bar is a widget whose text fallback is its first state ("0%| | 0/200"); readers of the
    static notebook see only that. Write each bar's last state (kept in the saved widget state) into
    its fallback, so a finished run reads as finished."""
    for output, box, parts in widget_boxes(notebook):
        if box["model_name"] != "HBoxModel" or \
                [part.get("model_name") for part in parts] != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
            continue
        prefix, bar, suffix = (part["state"] for part in parts)
        filled = int(10 * bar.get("value", 0) / (bar.get("max") or 1))
        text = f"{prefix.get('value', '')}|{'█' * filled}{' ' * (10 - filled)}|{suffix.get('value', '')}"
        output["data"]["text/plain"] = html.unescape(text).replace("\u2007", " ")


def describe_interactive(notebook) -> None:
    """An ``interact`` cell's text fallback is its widget's repr ("interactive(children=(IntSlider(…"),
    which is what a reader of the static notebook (or of an untrusted one, before "Run all") sees.
    Say in words what the controls are, and that the figure beside them shows their range."""
    for output, box, controls in widget_boxes(notebook):
        if "widget-interact" not in box["state"].get("_dom_classes", []):
            continue
        names = [c["state"].get("description") or c["model_name"].removesuffix("Model") for c in controls
                 if c and c.get("model_name") != "OutputModel"]
        output["data"]["text/plain"] = (f"[interactive controls: {', '.join(names)} — run the notebook to move "
                                        "them; the figure beside this cell shows what they explore]")


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=3600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    finish_progress_bars(notebook)
    describe_interactive(notebook)
    partial = path.with_name(f".{path.name}.partial")
    nbformat.write(notebook, partial)
    os.replace(partial, path)
    print(f"executed {path}")


if __name__ == "__main__":
    os.environ.pop("MINIDIFF_FAST", None)  # outputs come from the full mode
    here = Path(__file__).resolve().parent
    for name in sys.argv[1:] or sorted(p.name for p in here.glob("[0-9]*.ipynb")):
        execute((here / Path(name).name).resolve())
