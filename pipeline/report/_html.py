"""A self-contained HTML page: figures embedded as base64 PNG, tables, no external
resources (no scripts, fonts or style sheets from elsewhere), so it opens offline."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1b1b1b; line-height: 1.45; }
header { background: #23395d; color: white; padding: 18px 32px; }
header h1 { margin: 0; font-size: 24px; }
nav { padding: 8px 32px; background: #eef1f6; font-size: 14px; }
nav a { margin-right: 14px; color: #23395d; }
main { padding: 8px 32px 40px; max-width: 1400px; }
h2 { border-bottom: 2px solid #23395d; padding-bottom: 4px; margin-top: 36px; }
h3 { margin-top: 22px; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #eef1f6; }
td.l, th.l { text-align: left; }
.scroll { max-height: 480px; overflow: auto; display: inline-block; }
.finding { background: #fff6d6; border-left: 4px solid #e0a800; padding: 6px 12px; }
.flag { color: #b00020; font-weight: 600; }
.findings li { margin: 4px 0; }
details > summary { cursor: pointer; color: #23395d; font-weight: 600; }
pre { background: #f6f6f6; padding: 10px; font-size: 12px; overflow: auto; }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def figure(fig: Any, caption: str, *, dpi: int = 90) -> str:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return _img(buf.getvalue(), caption)


def png_file(path: Path, caption: str) -> str:
    """A PNG the pipeline wrote (e.g. abundance/forest_B.png), embedded."""
    return _img(Path(path).read_bytes(), caption)


def _img(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode()
    return (
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def number(value: float, digits: int = 3) -> str:
    """A number as a reader expects it: whole numbers with thousands separators (5,000,
    not 5e+03), others to ``digits`` significant digits, scientific notation only below
    0.001 (p-values)."""
    if pd.isna(value):
        return ""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 0.001:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 1, 1)}g}"


def table(frame: pd.DataFrame, *, digits: int = 3, scroll: bool = False, left: int = 1) -> str:
    """An HTML table; the first ``left`` columns left-aligned; numbers by `number`."""

    def cell(v: object) -> str:
        if isinstance(v, bool | np.bool_):
            return "yes" if v else "no"
        if isinstance(v, int | np.integer):
            return f"{int(v):,}"
        if isinstance(v, float | np.floating):
            return number(float(v), digits)
        return esc(v)

    cols = list(frame.columns)
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{esc(c)}</th>' for i, c in enumerate(cols)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"l" if i < left else ""}">{cell(v)}</td>' for i, v in enumerate(row)
        )
        + "</tr>"
        for row in frame.itertuples(index=False)
    )
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{out}</div>' if scroll else out


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are (anchor, heading, inner HTML)."""
    nav = "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(
        f'<section id="{a}"><h2>{esc(h)}</h2>{inner}</section>' for a, h, inner in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body><header><h1>{esc(title)}</h1>"
        f"<div>{esc(subtitle)}</div></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
