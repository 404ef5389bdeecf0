"""Do a notebook's figures survive sharing? Execute it, export it with plain ``jupyter nbconvert
--to html``, check the page, and open it in headless Chromium without network.

    .venv/bin/python tests/browser/html_export.py notebooks/00_quickstart.ipynb [--out /tmp/export]

Checks, per notebook:

- every plotly figure output became a plotly ``<div>`` whose ``Plotly.newPlot`` call carries data,
  and plotly.js is embedded once in the page (no script loaded from a CDN is needed for it);
- in Chromium (``--headless``, every host name unresolvable: offline), each figure div holds a
  drawn plot (``main-svg``) after the page's scripts ran, and a screenshot is not blank.

Used by ``tests/test_notebooks_html.py``; needs ``/usr/bin/chromium`` for the browser part
(Debian: ``apt-get install -y chromium``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
PLOTLY_MIME = "application/vnd.plotly.v1+json"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND"]


def kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager
    return "mstools" if "mstools" in KernelSpecManager().find_kernel_specs() else "python3"


def execute(path: Path, workdir: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run a notebook in quick mode with this checkout of mstools on the kernel's path."""
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    env = {"MSTOOLS_TEST": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment of this process
    try:
        NotebookClient(nb, kernel_name=kernel_name(), timeout=timeout,
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def to_html(nb: nbformat.NotebookNode) -> str:
    """Plain ``jupyter nbconvert --to html`` (the default lab template, no options)."""
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def figure_outputs(nb: nbformat.NotebookNode) -> int:
    """Number of plotly figures the executed notebook displayed."""
    return sum(PLOTLY_MIME in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


def check_page(html: str, n_figures: int) -> list[str]:
    """Problems with the exported page (empty list: fine)."""
    problems = []
    divs = re.findall(r'<div class="plotly-graph-div" id="([^"]+)"', html)
    if len(divs) != n_figures:
        problems.append(f"{n_figures} figures displayed, {len(divs)} plotly divs in the page")
    for d in divs:
        m = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(d) + r'",\s*(\[.*?\]),\s*\{', html, flags=re.S)
        if not m or len(m.group(1)) < 10:
            problems.append(f"figure {d}: no data in its Plotly.newPlot call")
    bundles = len(re.findall(r"\* plotly\.js v\d", html))
    if n_figures and bundles != 1:
        problems.append(f"plotly.js embedded {bundles} times (want once)")
    if re.search(r'<script[^>]+src="[^"]*plot\.ly', html):
        problems.append("the page loads plotly.js from a CDN")
    return problems


def png_is_blank(png: bytes) -> bool:
    """True when a PNG (8-bit RGB/RGBA) is one flat colour, or nearly."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width, height, channels = 8, b"", 0, 0, 3
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, _, colour = struct.unpack(">IIBB", data[:10])
            channels = {2: 3, 6: 4}.get(colour, 3)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    rows = [raw[i * stride + 1:(i + 1) * stride] for i in range(0, height, max(1, height // 200))]
    # filter bytes aside, a flat image has (almost) one value per row; count rows with structure
    busy = sum(len(set(r)) > 8 for r in rows)
    return busy < max(3, len(rows) // 50)


def render(html_path: Path, chromium: str, workdir: Path, budget_ms: int = 20000) -> tuple[str, bytes]:
    """The page's DOM after its scripts ran, and a screenshot, from headless Chromium offline."""
    url = html_path.resolve().as_uri()
    common = CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=workdir)}",
                               f"--virtual-time-budget={budget_ms}", "--window-size=1280,2400"]
    dom = subprocess.run([chromium, *common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180).stdout
    shot = workdir / (html_path.stem + ".png")
    subprocess.run([chromium, *common, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    return dom, shot.read_bytes() if shot.exists() else b""


def drawn_figures(dom: str) -> int:
    """Plotly divs that hold a drawn plot in a rendered DOM."""
    return len(re.findall(r'class="[^"]*js-plotly-plot[^"]*"', dom))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="mstools-html-")))
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    for path in args.notebooks:
        nb = execute(path, args.out)
        html = to_html(nb)
        page = args.out / (path.stem + ".html")
        page.write_text(html)
        n = figure_outputs(nb)
        problems = check_page(html, n)
        if Path(args.chromium).exists():
            dom, png = render(page, args.chromium, args.out)
            drawn = drawn_figures(dom)
            if drawn < n:
                problems.append(f"Chromium drew {drawn} of {n} figures")
            if not png or png_is_blank(png):
                problems.append("the screenshot is blank")
        print(json.dumps({"notebook": path.name, "figures": n, "page": str(page), "problems": problems}))
        ok &= not problems
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
