"""Open chapters in a real JupyterLab in a real browser, run them, and move every widget.

    python chapters/browser_check.py                     # 04_forward_noising and 06_samplers
    python chapters/browser_check.py 00_tour 03_gan      # chapter names, without .ipynb
    python chapters/browser_check.py --selftest          # a broken notebook must fail as expected (~30 s)
    make browser                                         # installs the browser extra, runs the default

Needs the ``browser`` extra (playwright, pinned in constraints.txt) and Debian's Chromium
(``apt-get install chromium``): Playwright drives /usr/bin/chromium headless and never downloads a
browser of its own (do not run ``playwright install``).

How it works. A temporary folder holds JupyterLab's config, runtime and data folders and a root
folder: ``root/chapters/`` has a copy of each chapter with its outputs cleared, and every other
top-level entry of the repository (``benchmarks``, ``data``, ...) is linked beside it, so a cell that
reads ``../benchmarks/...`` from the kernel's working folder (the notebook's folder) still works and
autosave can only touch the copy. The venv's data folder stays on Jupyter's search path, so the
ipywidgets lab extension loads (each interact cell must show a rendered widget, not its text).
JupyterLab listens on a free localhost port with a random token and ``MINIDIFF_FAST=1`` in its
environment, which kernels inherit. For each chapter the browser opens the copy, clicks Run > Run All
Cells, waits until no cell is queued and the kernel is idle, saves the copy through the File menu and
reads it back: every code cell must have run, none may hold an error. Then every slider of every
``interact`` cell gets one arrow key on its handle (a dropdown gets its next option) and that cell's
output (its images and text) must change.

Playwright also reads the kernel's websocket. Only a widget value sent by the browser re-runs an
interact function, so: (a) before anything is touched the browser must have sent no widget value at
all; one means a widget changed its own value when drawn (a slider snapping its initial value to its
grid, say), so its function ran again and its figure may disagree with its label; (b) after a move,
the output is compared only once the kernel has answered every update (an idle status whose parent is
that update). Prints one line per failure and a summary with the times; exits 1 on any failure.
"""
import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
DEFAULT = ["04_forward_noising", "06_samplers"]
# Measured on 2 cores shared with other work (load 4–10): page open 4–8 s, Run All 8–47 s (04) and
# 3–13 min (06), one widget 1–80 s. The limits are generous; --limit bounds the whole run.
OPEN_S, RUN_ALL_S, WIDGET_S = 180, 1200, 240
DEADLINE = [float("inf")]  # --limit: no wait goes past it
SETTINGS = {  # JupyterLab user settings: every cell in the DOM, cell timings saved, no news pop-ups
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "recordTiming": True},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
OUTPUT_JS = """cell => { const out = cell.querySelector('.widget-interact .widget-output');
  return out && [...out.querySelectorAll('img')].map(i => i.src).join('|') + '\\n' + out.innerText; }"""
SELFTEST_CELLS = [  # (source, the failure the check must report for that cell, or None)
    ("import ipywidgets as widgets", None),
    ("def good(n=1):\n    print('n =', n)\nwidgets.interact(good, n=widgets.IntSlider(1, 0, 5));", None),
    ("def boom(n=1):\n    if n != 1:\n        raise ValueError('broken on purpose')\n    print('n =', n)\n"
     "widgets.interact(boom, n=widgets.IntSlider(1, 0, 5));", "cell 2, widget 'n': ValueError: broken on purpose"),
    ("def frozen(n=1):\n    print('always the same')\nwidgets.interact(frozen, n=widgets.IntSlider(1, 0, 5));",
     "cell 3, widget 'n': its output did not change"),
    ("def snap(s=0.2):\n    print('s =', s)\n"  # 0.2 is not on this slider's grid 10^(-2.5 + 0.1 k)
     "widgets.interact(snap, s=widgets.FloatLogSlider(0.2, base=10, min=-2.5, max=0.3, step=0.1));",
     "before any interaction the browser sent 1 widget value(s)"),
    ("raise RuntimeError('a cell that fails')", "cell 5 raised RuntimeError: a cell that fails"),
]


class Kernel:
    """What the browser says to the kernel and what it hears back, read off the websocket frames."""

    def __init__(self, page):
        self.updates, self.answered, self.frames, self.ready = [], set(), 0, False
        page.on("websocket", self._attach)

    def _attach(self, ws):
        if "/api/kernels/" in ws.url:  # the kernel's channels (not the server's events socket)
            ws.on("framesent", lambda frame: self._sent(decode(frame)))
            ws.on("framereceived", lambda frame: self._received(decode(frame)))

    def _sent(self, msg):
        self.frames += 1
        data = msg and msg.get("header", {}).get("msg_type") == "comm_msg" and msg["content"].get("data", {})
        if data and data.get("method") == "update":  # a widget's state, from the browser
            self.updates.append((msg["header"].get("msg_id"), data.get("state", {})))

    def _received(self, msg):
        self.frames += 1
        kind = msg and msg.get("header", {}).get("msg_type")
        self.ready = self.ready or kind == "kernel_info_reply"
        if kind == "status" and msg.get("content", {}).get("execution_state") == "idle":
            self.answered.add(msg.get("parent_header", {}).get("msg_id"))

    def pending(self):
        return [msg_id for msg_id, _ in self.updates if msg_id not in self.answered]


def decode(frame):
    """A kernel message from a websocket frame: JSON text, or jupyter_server's v1 binary framing
    (uint64 count, that many uint64 offsets, then channel, header, parent_header, metadata, content...)."""
    try:
        if isinstance(frame, str):
            return json.loads(frame)
        count = int.from_bytes(frame[:8], "little")
        offsets = [int.from_bytes(frame[8 * i: 8 * i + 8], "little") for i in range(1, count + 1)] + [len(frame)]
        part = lambda i: json.loads(frame[offsets[i]:offsets[i + 1]] or b"{}")
        return {"header": part(1), "parent_header": part(2), "content": part(4)}
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def wait_until(page, condition, timeout, what):
    """Poll ``condition`` every 0.25 s; page.wait_for_timeout lets Playwright deliver websocket events."""
    deadline = min(time.monotonic() + timeout, DEADLINE[0])
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within " + ("--limit" if deadline == DEADLINE[0] else f"{timeout} s"))
        page.wait_for_timeout(250)


def api(url, token, path, method="GET"):
    request = urllib.request.Request(f"{url}/api/{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else None


def start_lab(tmp: Path):
    """JupyterLab on a free localhost port, all it writes under ``tmp``: (url, token, process)."""
    settings = tmp / "config" / "lab" / "user-settings"
    for key, value in SETTINGS.items():
        (settings / key).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{key}.jupyterlab-settings").write_text(json.dumps(value))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = dict(os.environ, MINIDIFF_FAST="1", JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_DATA_DIR=str(tmp / "data"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"), IPYTHONDIR=str(tmp / "ipython"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp / 'root'}"]
    cmd += ["--allow-root"] if os.geteuid() == 0 else []
    with open(tmp / "lab.log", "wb") as log:
        lab = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, started = f"http://127.0.0.1:{port}", time.monotonic()
    while True:
        try:
            api(url, token, "status")
            return url, token, lab
        except OSError:
            if lab.poll() is not None or time.monotonic() > started + OPEN_S:
                lab.kill()
                sys.exit("FAIL: JupyterLab did not start:\n" + (tmp / "lab.log").read_text(errors="replace")[-2000:])
            time.sleep(0.5)


def copy_chapter(notebook: dict, root: Path, name: str) -> Path:
    """Write ``notebook`` without outputs to root/chapters/NAME.ipynb; link the repo's other entries."""
    (root / "chapters").mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name != "chapters" and not entry.name.startswith(".") and not (root / entry.name).exists():
            (root / entry.name).symlink_to(entry)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook["metadata"].pop("widgets", None)
    path = root / "chapters" / f"{name}.ipynb"
    path.write_text(json.dumps(notebook, indent=1))
    return path


def took(cell: dict) -> float:
    """Seconds a cell ran, from the timestamps that JupyterLab saves with recordTiming."""
    stamps = [cell["metadata"].get("execution", {}).get(k) for k in ("iopub.execute_input", "shell.execute_reply")]
    start, end = (datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None for s in stamps)
    return (end - start).total_seconds() if start and end else 0.0


def menu(page, title, command):
    page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{title}$")).click()
    page.locator(f'.lm-Menu-item[data-command="{command}"]').click()


def check_chapter(browser, url, token, path: Path, times: dict, screenshots=None) -> list:
    """Run one chapter's copy in the browser and move its widgets: its failures, one line each."""
    source, failures = json.loads(path.read_text())["cells"], []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    kernel = Kernel(page)
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    prompts = lambda: cells.evaluate_all("cs => cs.map(c => (c.querySelector('.jp-InputPrompt') || {}).innerText)")
    status = page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator")
    idle = lambda: status.count() and status.first.get_attribute("data-status") == "idle"
    try:
        started = time.monotonic()
        page.goto(f"{url}/lab/tree/chapters/{path.name}?reset&token={token}", timeout=OPEN_S * 1000)
        wait_until(page, lambda: cells.count() == len(source) and kernel.ready and idle(), OPEN_S,
                   "the notebook with a connected, idle kernel")
        times["page open"], started = time.monotonic() - started, time.monotonic()
        for attempt in range(3):  # queued cells show [*] at once: if none does, the click did not take
            menu(page, "Run", "runmenu:run-all")
            try:
                wait_until(page, lambda: any(re.search(r"\[(\*|\d+)\]", p or "") for p in prompts()), 20, "Run All")
                break
            except TimeoutError:
                if attempt == 2:
                    raise
        quiet = [0]  # polls in a row with no cell queued, an idle kernel, every widget update answered

        def finished():
            calm = idle() and not any("*" in (p or "") for p in prompts()) and not kernel.pending()
            quiet[0] = quiet[0] + 1 if calm else 0
            return quiet[0] >= 8
        wait_until(page, finished, RUN_ALL_S, "Run All Cells finishing")
        times["run all"] = time.monotonic() - started

        mtime = path.stat().st_mtime_ns
        menu(page, "File", "docmanager:save")
        wait_until(page, lambda: path.stat().st_mtime_ns != mtime, 60, "saving the notebook's copy")
        saved = json.loads(path.read_text())["cells"]
        slowest = sorted(range(len(saved)), key=lambda i: -took(saved[i]))[:3]
        note = ", ".join(f"cell {i} {took(saved[i]):.0f} s" for i in slowest)
        times[f"run all (slowest: {note})"] = times.pop("run all")
        for i, cell in enumerate(saved):
            errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
            if errors:
                failures.append(f"cell {i} raised {errors[0]['ename']}: {errors[0]['evalue']}")
            elif cell["cell_type"] == "code" and cell.get("execution_count") is None:
                failures.append(f"cell {i} did not run")
        if not kernel.frames:
            failures.append("read no kernel message off the websocket: this check cannot see the kernel")
        values = [state for _, state in kernel.updates if {"value", "index"} & set(state)]  # not Output's own
        if values:
            failures.append(f"before any interaction the browser sent {len(values)} widget value(s) to the kernel "
                            f"({', '.join(map(json.dumps, values[:4]))}): a widget changed its own value when "
                            "drawn, so its interact function ran again")

        for i in [i for i, c in enumerate(source) if c["cell_type"] == "code" and "interact(" in "".join(c["source"])]:
            cell, box = cells.nth(i), cells.nth(i).locator(".widget-interact").first
            try:
                box.wait_for(timeout=30_000)
            except PlaywrightError:
                text = cell.locator(".jp-OutputArea").inner_text()[:100].replace("\n", " ")
                failures.append(f"cell {i}: no rendered widget (is the ipywidgets lab extension loaded?): {text!r}")
                continue
            controls = box.locator(":scope > .widget-slider, :scope > .widget-dropdown")
            if not controls.count():
                failures.append(f"cell {i}: its widget has no slider or dropdown to move")
            for k in range(controls.count()):
                failures += move(page, kernel, cell, controls.nth(k), i, times)
            if screenshots:
                cell.screenshot(path=str(Path(screenshots) / f"{path.stem}_cell{i}.png"))
        for text in ("Error displaying widget", "Loading widget..."):
            stuck = page.locator(".jp-OutputArea-output", has_text=text)
            if stuck.count():
                failures.append(f"{stuck.count()} output(s) show {text!r}: {stuck.first.inner_text()[:100]!r}")
    except (TimeoutError, PlaywrightError) as error:
        shot = Path(tempfile.gettempdir()) / f"browser_check_{path.stem}.png"
        page.screenshot(path=str(shot))
        failures.append(f"{str(error).splitlines()[0]} (screenshot: {shot})")
    finally:
        page.close()
        for session in api(url, token, "sessions"):  # shuts its kernel down
            api(url, token, f"sessions/{session['id']}", "DELETE")
    return failures


def move(page, kernel, cell, control, i, times) -> list:
    """Change one slider or dropdown from the UI; its cell's output must change. [] or [the failure]."""
    label = control.locator(".widget-label").first.inner_text().strip() or "?"
    signature = lambda: hashlib.sha1((cell.evaluate(OUTPUT_JS) or "").encode()).hexdigest()
    before, sent, started = signature(), len(kernel.updates), time.monotonic()
    if "widget-dropdown" in (control.get_attribute("class") or ""):
        select = control.locator("select")
        index, count = select.evaluate("s => s.selectedIndex"), select.locator("option").count()
        select.select_option(index=(index + 1) % count)
        shown = f"option {index} → {(index + 1) % count}"
    else:
        readout, handle = control.locator(".widget-readout"), control.locator(".noUi-handle")
        old = readout.inner_text()
        handle.press("ArrowRight")
        if readout.inner_text() == old:  # already at its maximum
            handle.press("ArrowLeft")
        shown = f"{old} → {readout.inner_text()}"
    problem = None
    try:
        wait_until(page, lambda: len(kernel.updates) > sent, 30, "the browser sending the new value")
        wait_until(page, lambda: not kernel.pending(), WIDGET_S, "the kernel answering the new value")
        wait_until(page, lambda: signature() != before, 10, "the output changing")
        page.wait_for_timeout(500)  # let the last output message render
    except TimeoutError as error:
        problem = "its output did not change" if "output changing" in str(error) else str(error)
    trace = cell.locator(".widget-output .jp-OutputArea-output", has_text="Traceback")
    if trace.count():  # the interact function raised: its last line says what
        problem = trace.first.inner_text().strip().splitlines()[-1]
    times[f"cell {i} {label} ({shown})"] = time.monotonic() - started
    return [f"cell {i}, widget {label!r}: {problem}"] if problem else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", default=DEFAULT, help="chapter names without .ipynb")
    parser.add_argument("--selftest", action="store_true", help="check a broken notebook; it must fail as expected")
    parser.add_argument("--limit", type=float, default=1800, help="seconds for everything (default 1800)")
    parser.add_argument("--screenshots", metavar="DIR", help="save a PNG of each interact cell there")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"FAIL: {CHROMIUM} is missing (apt-get install chromium)")
    if args.selftest:
        cells = [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
                 for s, _ in SELFTEST_CELLS]
        kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebooks = {"selftest": {"cells": cells, "metadata": {"kernelspec": kernelspec}, "nbformat": 4,
                                  "nbformat_minor": 4}}
    else:
        for name in args.chapters:
            if not (REPO / "chapters" / f"{name}.ipynb").exists():
                sys.exit(f"FAIL: no chapters/{name}.ipynb")
        notebooks = {name: json.loads((REPO / "chapters" / f"{name}.ipynb").read_text()) for name in args.chapters}
    failures, started = [], time.monotonic()
    DEADLINE[0] = started + args.limit
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("FAIL: stopped by SIGTERM"))  # still stop JupyterLab
    with tempfile.TemporaryDirectory(prefix="minidiff-browser-") as tmp, sync_playwright() as p:
        paths = [copy_chapter(nb, Path(tmp) / "root", name) for name, nb in notebooks.items()]
        url, token, lab = start_lab(Path(tmp))
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            for path in paths:
                times, chapter_started = {}, time.monotonic()
                found = check_chapter(browser, url, token, path, times, args.screenshots)
                failures += [f"FAIL {path.stem}: {line}" for line in found]
                moved = sum(what.startswith("cell ") for what in times)
                print(f"{path.stem}: {'FAIL' if found else 'ok'}, {moved} widget(s) moved, "
                      f"{time.monotonic() - chapter_started:.0f} s in all", flush=True)
                for what, seconds in times.items():
                    print(f"  {what}: {seconds:.1f} s", flush=True)
            browser.close()
        finally:
            lab.terminate()
            try:
                lab.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(lab.pid, 9)
    print("\n".join(failures + [f"browser_check: {len(paths)} notebook(s), {len(failures)} failure(s), "
                                f"{time.monotonic() - started:.0f} s"]))
    if args.selftest:  # every expected failure reported, nothing else
        expected = [why for _, why in SELFTEST_CELLS if why]
        wrong = [f"selftest: not caught: {why}" for why in expected if not any(why in f for f in failures)]
        wrong += [f"selftest: unexpected: {f}" for f in failures if not any(why in f for why in expected)]
        print("\n".join(wrong + [f"selftest: {'FAIL' if wrong else 'ok'}"]))
        sys.exit(1 if wrong else 0)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
