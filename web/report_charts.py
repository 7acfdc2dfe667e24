"""The report's charts: matplotlib figures rendered to inline SVG (no JavaScript, no fonts
to fetch: the page names generic font families and the browser uses what it has).

Figures are made with `matplotlib.figure.Figure`, never pyplot, as matplotlib advises for
servers: no global figure registry to leak into and nothing to close; the canvas is the
Agg one (SVG output goes through the SVG backend's own writer).

Text from the catalog (folder names, model names, failure reasons) is written by
matplotlib's XML writer, which escapes it (`svg.fonttype: none` keeps it as <text>, so
a browser shows and searches it); `plain()` also stops matplotlib from reading `$...$`
in it as mathtext, which could fail to parse.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

from markupsafe import Markup
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from artnote.emotions import EMOTIONS

STYLE = {
    "svg.fonttype": "none",  # text as <text>, not glyph paths: smaller, selectable
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# One colour per emotion, in EMOTIONS order; BAR for charts of other counts.
COLORS = (
    "#f5a623", "#3b6fc4", "#5cb85c", "#f0d43a", "#d9534f",
    "#8a9a2b", "#6f42c1", "#5b6f86", "#b0b0b0",
)  # fmt: skip
BAR = "#3b6fc4"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
LABEL_WIDTH = 48


def plain(text: object, width: int = LABEL_WIDTH) -> str:
    """A catalog text as a chart label: one line, at most `width` characters, never
    mathtext (every `$` escaped, which matplotlib shows as a plain `$`)."""
    one_line = _CONTROL.sub(" ", str(text))
    if len(one_line) > width:
        one_line = one_line[: width - 1] + "…"
    return one_line.replace("$", r"\$")


def to_svg(fig: Figure) -> Markup:
    """The figure as an <svg> element to put inline in HTML (no XML prolog)."""
    FigureCanvasAgg(fig)
    buffer = io.StringIO()
    with rc_context(STYLE):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    return Markup(text[text.index("<svg") :])  # matplotlib escaped its text


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def bars(labels: Sequence[object], values: Sequence[float], title: str, xlabel: str) -> Markup:
    """Horizontal bars, first label on top."""
    with rc_context(STYLE):
        fig, (ax,) = _figure(7, 0.8 + 0.28 * max(len(labels), 1))
        positions = range(len(labels))
        ax.barh(positions, values, color=BAR)
        ax.set_yticks(list(positions), [plain(label) for label in labels])
        ax.invert_yaxis()
        ax.set(title=title, xlabel=xlabel)
        return to_svg(fig)


def emotions(sums: Sequence[float], dominant: Sequence[int]) -> Markup:
    """Left: the sum of every image's probabilities per emotion; right: dominant counts."""
    with rc_context(STYLE):
        fig, (left, right) = _figure(10, 3.4, ncols=2)
        for ax, values, title in (
            (left, sums, "sum of probabilities"),
            (right, dominant, "images whose dominant emotion it is"),
        ):
            ax.barh(range(len(EMOTIONS)), values, color=COLORS)
            ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
            ax.invert_yaxis()
            ax.set_title(title)
        return to_svg(fig)


def folder_mix(folders: Sequence[str], shares: Sequence[Sequence[float]]) -> Markup:
    """Per folder, a stacked bar of its mean emotion distribution (shares sum to 1)."""
    with rc_context(STYLE):
        fig, (ax,) = _figure(10, 1.2 + 0.3 * max(len(folders), 1))
        left = [0.0] * len(folders)
        for k, label in enumerate(EMOTIONS):
            widths = [row[k] for row in shares]
            ax.barh(range(len(folders)), widths, left=left, color=COLORS[k], label=label)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_yticks(range(len(folders)), [plain(f) for f in folders])
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="share of the folder's emotion probability")
        fig.legend(ncols=5, loc="outside lower center")
        return to_svg(fig)


def histogram(edges: Sequence[int], counts: Sequence[int], marks: Sequence[int]) -> Markup:
    """Alt-text lengths in bins, with a vertical line at each of `marks` (characters)."""
    with rc_context(STYLE):
        fig, (ax,) = _figure(8, 3)
        widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
        ax.bar(edges[:-1], counts, width=widths, align="edge", color=BAR)
        for mark, color in zip(marks, ("#e6a23c", "#e8684a"), strict=False):
            ax.axvline(mark, color=color, linestyle="--", label=f"{mark} characters")
        ax.set(xlabel="alt text length (characters)", ylabel="images")
        ax.legend()
        return to_svg(fig)


def adapter_history(series: dict[str, list[tuple[int, float]]]) -> Markup:
    """Left: validation loss and emotion numbers; right: caption metrics per field."""
    with rc_context(STYLE):
        fig, (left, right) = _figure(10, 3.6, ncols=2)
        for name, points in series.items():
            ax = right if " " in name else left  # "alt_text bleu4" vs "val_loss"
            ax.plot([e for e, _ in points], [v for _, v in points], "o-", label=name)
        for ax, title in ((left, "loss and emotions"), (right, "captions (per field)")):
            ax.set(title=title, xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ax.lines:
                ax.legend(fontsize="small")
        return to_svg(fig)
