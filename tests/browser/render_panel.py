"""Render the steering panel in a real JupyterLab and take screenshots (a manual check, not in CI).

Starts JupyterLab headless on 127.0.0.1 with the project's kernel, opens a small notebook that
builds the panel on the testbed, runs it, screenshots it with headless Chromium (driven over the
Chrome DevTools protocol with ``websocket-client``), clicks Generate, waits for the run to finish and
screenshots again.

    .venv/bin/python tests/browser/render_panel.py            # writes /tmp/panel_before.png, /tmp/panel_after.png

Needs ``/usr/bin/chromium`` (Debian: ``apt-get install -y chromium``) and the ``mstools`` kernel
(``make setup`` installs it). Everything stays on localhost; both processes are stopped at the end.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import websocket

REPO = Path(__file__).resolve().parents[2]
JUPYTER = REPO / ".venv" / "bin" / "jupyter"

SETUP = """\
import torch
torch.set_num_threads(1)
import mstools
from mstools.steering import SteeringVector
from mstools.testbed import make_dataset
from mstools.ui.widgets import SteeringPanel

model = mstools.load_musicgen("testbed")
HOOK = "blocks.2.hook_resid_post"
clips = make_dataset(64, frames=40, seed=3)
_, cache = model.run_with_cache(torch.stack([c.codes for c in clips]), [c.prompt for c in clips],
                                names_filter=[HOOK])
x = cache[HOOK].mean(1)
is_jazz = torch.tensor([c.labels["genre"] == "jazz" for c in clips])
jazz = SteeringVector({HOOK: x[is_jazz].mean(0) - x[~is_jazz].mean(0)}, model.fingerprint,
                      source="diff_means:genre=jazz-vs-rest").normalized()"""

PANEL = """\
panel = SteeringPanel(model, {"jazz": jazz, "minus jazz": -jazz},
                      prompts=["fast rock with brass", "slow classical with strings"], duration=6.0)
panel.window.value = (3.0, 6.0)
panel"""


def wait_http(url: str, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


class Tab:
    """A minimal Chrome DevTools protocol client for one page."""

    def __init__(self, port: int):
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120,
                                              suppress_origin=True)
        self.next_id = 0

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JS error in {expr[:60]!r}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def wait_for(self, expr: str, seconds: float, what: str):
        end = time.time() + seconds
        while time.time() < end:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"waited {seconds} s for {what}")

    def screenshot(self, path: str) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        print(f"wrote {path}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8899)
    ap.add_argument("--cdp-port", type=int, default=9333)
    ap.add_argument("--out", default="/tmp/panel")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mstools-panel-"))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "mstools", "display_name": "mstools (Python 3.11)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(PANEL)]
    nbformat.write(nb, work / "panel.ipynb")
    token = secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(work / "runtime"), PYTHONUNBUFFERED="1")
    lab = chrome = None
    try:
        lab = subprocess.Popen(
            [str(JUPYTER), "lab", "--no-browser", f"--port={args.port}", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.token={token}", f"--notebook-dir={work}",
             "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.news_url=None"] + (["--allow-root"] if os.geteuid() == 0 else []),
            stdout=open(work / "lab.log", "w"), stderr=subprocess.STDOUT, env=env)
        wait_http(f"http://127.0.0.1:{args.port}/api/status?token={token}", 90)
        chrome = subprocess.Popen(
            [args.chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={work / 'chrome'}",
             f"--remote-debugging-port={args.cdp_port}", "--remote-allow-origins=*",
             "--window-size=1400,1500", "about:blank"],
            stdout=open(work / "chrome.log", "w"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{args.cdp_port}/json/version", 30)
        tab = Tab(args.cdp_port)
        tab.send("Page.enable")
        tab.send("Emulation.setFocusEmulationEnabled", enabled=True)
        tab.send("Page.navigate", url=f"http://127.0.0.1:{args.port}/lab/tree/panel.ipynb?token={token}")
        tab.wait_for("!!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell'))",
                     90, "JupyterLab and the notebook")
        # JupyterLab 4.6 may still ask which kernel to start: take the notebook's own (preselected)
        for _ in range(20):
            if tab.js("(() => { const b = [...document.querySelectorAll('.jp-Dialog button')]"
                      ".find(b => b.textContent.trim() === 'Select'); if (b) { b.click(); return true }"
                      " return false })()"):
                break
            time.sleep(0.5)
        tab.wait_for("!!document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=idle]')",
                     120, "the mstools kernel to start")
        # a headless page has no focus, so JupyterLab has no current widget: activate the notebook
        tab.js("(() => { const nb = [...jupyterapp.shell.widgets('main')].find(w => w.sessionContext);"
               " jupyterapp.shell.activateById(nb.id); return nb.id })()")
        tab.wait_for("!!jupyterapp.shell.currentWidget", 20, "the notebook to be the current widget")
        tab.js("jupyterapp.shell.collapseLeft()")
        t0 = time.time()
        tab.js("(jupyterapp.commands.execute('notebook:run-all-cells'), true)")  # do not await it
        tab.wait_for("[...document.querySelectorAll('button')].some(b => b.textContent.trim() === "
                     "'Generate')", 300, "the panel's Generate button")
        print(f"panel rendered {time.time() - t0:.1f} s after run-all")
        # the note for static copies is hidden where the live panel renders
        note = tab.js("(() => { const n = document.querySelector('.mstools-static-note');"
                      " return n ? getComputedStyle(n).display : 'absent' })()")
        print(f"static-copy note next to the live panel: display={note}")
        time.sleep(2)
        # dismiss JupyterLab's "news?" toast, then show the panel from its first control
        tab.js("[...document.querySelectorAll('.jp-toast-button')].filter(b => b.textContent.trim()"
               " === 'No').forEach(b => b.click())")
        tab.js("document.querySelector('.jp-OutputArea-output .widget-vbox')"
               ".scrollIntoView({block: 'start'})")
        time.sleep(1)
        tab.screenshot(f"{args.out}_before.png")
        tab.js("[...document.querySelectorAll('button')].find(b => b.textContent.trim() === "
               "'Generate').click()")
        t0 = time.time()
        # the bar moves while the run goes on: the kernel keeps serving widget messages
        seen = []
        while time.time() - t0 < 300 and not tab.js("document.body.innerText.includes('Done in')"
                                                     " || document.body.innerText.includes('Could not')"):
            bar = tab.js("(document.querySelector('.widget-hprogress .progress-bar') || {style: {}})"
                         ".style.width || ''")
            if bar and (not seen or seen[-1] != bar):
                seen.append(bar)
            time.sleep(0.25)
        print(f"progress bar widths seen during the run: {seen}")
        status = tab.wait_for(
            "(() => { const t = document.body.innerText;"
            " return (t.includes('Done in') || t.includes('Could not generate')) ? "
            "t.split('\\n').find(l => l.includes('Done in') || l.includes('Could not')) : null })()",
            300, "the run to finish")
        print(f"status after {time.time() - t0:.1f} s: {status}")
        tab.wait_for("document.querySelectorAll('.js-plotly-plot').length >= 3", 60,
                     "three plotly figures")
        plots = tab.js("document.querySelectorAll('.js-plotly-plot').length")
        audios = tab.js("[...document.querySelectorAll('audio')].filter(a => a.src && "
                        "a.src.startsWith('blob:')).length")
        print(f"plotly figures: {plots}, audio players with data: {audios}")
        time.sleep(2)
        tab.js("document.querySelector('.jp-OutputArea-output .widget-vbox')"
               ".scrollIntoView({block: 'start'})")
        time.sleep(1)
        tab.screenshot(f"{args.out}_after.png")
        tab.js("document.querySelector('.js-plotly-plot').scrollIntoView({block: 'start'})")
        time.sleep(1)
        tab.screenshot(f"{args.out}_plots.png")
        ok = "Done in" in (status or "") and plots >= 3 and note in ("none", "absent")
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    except Exception:
        try:  # what the page showed when it failed
            tab.screenshot(f"{args.out}_failed.png")  # noqa: F821 - set once Chromium answered
        except Exception:
            pass
        for log in ("lab.log", "chrome.log"):
            if (work / log).is_file():
                print(f"--- last lines of {log}:\n" + "".join((work / log).open().readlines()[-15:]))
        raise
    finally:
        stop(chrome)
        stop(lab)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
