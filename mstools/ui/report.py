"""A self-contained HTML report: text, plotly figures, tables and audio players in one file.

Works offline: plotly.js is embedded once, audio is embedded as base64 wav.

>>> r = Report("mstools demo")
>>> r.heading("Probes"); r.text("Genre is read best at layer 3."); r.figure(fig); r.table(df)
>>> r.write("outputs/report.html").name
'report.html'
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from mstools.core.fileio import atomic_write_text
from mstools.ui.audio import audio_html

__all__ = ["Report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em} h2{margin-top:2em;border-bottom:1px solid #eee}
table.df{border-collapse:collapse;font-size:.85em;margin:1em 0} table.df td,table.df th{border:1px solid #ddd;
padding:3px 8px;text-align:right} table.df th{background:#f6f6f6}
figure.clip{display:inline-block;margin:.4em 1em .4em 0} .cap{font-size:.85em;color:#555}
p.note{color:#555;font-size:.9em} code{background:#f4f4f4;padding:0 3px}
"""


class Report:
    """Collects sections and writes one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self._plotly_included = False

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, note: bool = False) -> None:
        """A paragraph (plain text; `code` in backticks is rendered as code)."""
        esc = html.escape(text)
        pieces = esc.split("`")
        esc = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
        cls = " class='note'" if note else ""
        self.parts.append(f"<p{cls}>{esc}</p>")

    def figure(self, fig: Any) -> None:
        if not self._plotly_included:  # plotly.js once, inline: the file works offline
            import plotly.offline  # lazy: display libraries load when something is drawn
            self.parts.append(f"<script>{plotly.offline.get_plotlyjs()}</script>")
            self._plotly_included = True
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=False))

    def table(self, df: Any, float_format: str = "{:.3f}", max_rows: int = 60) -> None:
        shown = df.head(max_rows)
        self.parts.append(shown.to_html(classes="df", index=False, border=0,
                                        float_format=lambda x: float_format.format(x),
                                        na_rep=""))
        if len(df) > max_rows:
            self.text(f"({len(df) - max_rows} more rows not shown)", note=True)

    def audio(self, clips: list[tuple[str, Any, int]]) -> None:
        """A row of players: ``[(label, audio [C, N], sample_rate), ...]``."""
        self.parts.append("<div>" + "".join(audio_html(a, sr, label) for label, a, sr in clips)
                          + "</div>")

    def html(self) -> str:
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                f"</title><style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"{body}</body></html>")

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file, then rename)."""
        return atomic_write_text(path, self.html())
