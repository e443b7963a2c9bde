"""Charts as SVG, drawn by the server: no script, no library, nothing fetched. Pure.

Every value written into the SVG is a number or escaped text; the look (colours, fonts) is
the stylesheet's, through classes, so the page's Content-Security-Policy needs no inline style.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import NamedTuple

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 12, 28  # room for the axes' labels


class DayBar(NamedTuple):
    day: str  # YYYY-MM-DD
    billed: int
    saved: int


def _nice_top(value: int) -> int:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def tokens_label(value: float) -> str:
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def spend_chart(bars: Sequence[DayBar], title: str) -> str:
    """Tokens billed and saved per day as stacked bars (billed below, saved above)."""
    top = _nice_top(max([10, *(bar.billed + bar.saved for bar in bars)]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(bars))
    gap = min(2.0, slot * 0.2)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for share in (0, 0.5, 1):
        y = TOP + plot_h * (1 - share)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{tokens_label(top * share)}</text>"
        )
    for i, bar in enumerate(bars):
        x = LEFT + i * slot + gap / 2
        billed_h = plot_h * bar.billed / top
        saved_h = plot_h * bar.saved / top
        parts.append(
            f'<g class="day" data-day="{escape(bar.day)}" data-billed="{bar.billed}" '
            f'data-saved="{bar.saved}"><title>{escape(bar.day)}: {bar.billed:,} tokens billed, '
            f"{bar.saved:,} saved</title>"
            f'<rect class="billed" x="{x:.1f}" y="{TOP + plot_h - billed_h:.1f}" '
            f'width="{slot - gap:.1f}" height="{billed_h:.1f}"/>'
            f'<rect class="saved" x="{x:.1f}" y="{TOP + plot_h - billed_h - saved_h:.1f}" '
            f'width="{slot - gap:.1f}" height="{saved_h:.1f}"/></g>'
        )
    for i in sorted({0, len(bars) // 2, len(bars) - 1}) if bars else ():
        x = LEFT + (i + 0.5) * slot
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{escape(bars[i].day[5:])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
