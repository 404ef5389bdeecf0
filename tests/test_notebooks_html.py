"""Figures survive sharing: a notebook executed in quick mode and exported with plain
``jupyter nbconvert --to html`` shows its plotly figures offline, and the steering panel's static copy
says what to do and keeps the saved run.

Uses ``tests/browser/html_export.py``; the browser part runs where ``chromium`` is installed.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))
import html_export  # noqa: E402

from mstools.ui.widgets import STATIC_NOTE  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    pages = {}
    for name in ("00_quickstart", "06_interactive_steering"):
        nb = html_export.execute(NOTEBOOKS / f"{name}.ipynb", out)
        html = html_export.to_html(nb)
        page = out / f"{name}.html"
        page.write_text(html)
        pages[name] = (nb, html, page)
    return out, pages


@pytest.mark.slow
@pytest.mark.parametrize("name", ["00_quickstart", "06_interactive_steering"])
def test_export_holds_every_figure_with_its_data(exported, name):
    _, pages = exported
    nb, html, _ = pages[name]
    n = html_export.figure_outputs(nb)
    assert n >= 1
    assert html_export.check_page(html, n) == []


@pytest.mark.slow
def test_panel_static_copy_has_a_note_and_the_saved_run(exported):
    _, pages = exported
    _, html, _ = pages["06_interactive_steering"]
    assert STATIC_NOTE.split(":")[0] in html and "run the cells above" in html
    assert "Saved panel run" in html and html.count("<figcaption") >= 2
    assert "unsteered (same prompt and seed)" in html


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
@pytest.mark.parametrize("name", ["00_quickstart", "06_interactive_steering"])
def test_chromium_draws_the_figures_offline(exported, name):
    out, pages = exported
    nb, _, page = pages[name]
    dom, png = html_export.render(page, CHROMIUM, out)
    assert html_export.drawn_figures(dom) >= html_export.figure_outputs(nb)
    assert png and not html_export.png_is_blank(png)


def test_blank_png_is_told_apart():
    import struct
    import zlib

    def png(rows):
        raw = b"".join(b"\x00" + bytes(r) for r in rows)
        chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))  # noqa: E731
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", len(rows[0]) // 3, len(rows), 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert html_export.png_is_blank(png([[255] * 300] * 200))
    assert not html_export.png_is_blank(png([[(i * 7 + j) % 256 for i in range(300)] for j in range(200)]))
