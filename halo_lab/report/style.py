"""The one plotting style of halo_lab. Every figure of the project is built with these helpers:
halo_lab.report's plots (``plots.py``), halo_lab.eval's loss by position, halo_lab.bench's ``bench.png``
(``bench/plots.py``) and ``experiments/ddp/plot.py``. ``halo_lab.report.audit`` checks a finished figure
against the rules (tests/test_plot_style.py runs it on every plotting site).

The rules:

1. **Figures** (``figure``, ``panel_grid``, ``save``): matplotlib's Agg canvas (no display, no pyplot
   state), constrained layout, saved at ``DPI`` with a tight bounding box (nothing cut at the edges).
2. **Legends outside the data** (``legend``): one legend per figure, right of the panels; never a legend
   inside an axes.
3. **Bars from zero** (``bars``): horizontal bars (names read without rotation) whose value axis starts
   at 0, the value written after each bar and inside the frame (``save`` widens the value axis until
   every label fits), error bars clipped at 0; the names get room of their own (``name_room``), so long
   names never squeeze the panels into overlapping axis labels.
4. **Margins** (``padded``): every limit a plot sets itself leaves ``MARGIN`` of the span on each side,
   so no marker is cut by the frame; matplotlib's own autoscale keeps its margins.
5. **One number formatter** (``number``, ``number_formatter``): every numeric tick and value label.
   Below 1,000 up to 4 significant digits (``0.25``, ``1.325``, ``612.3``); from 1,000 in K and from
   1,000,000 in M (``1.5K``, ``8K``, ``14K``, ``625.5K``, ``1.2M``). An integer multiple of 1,024 counts
   in K of 1,024 (sequence lengths: ``1K``, ``4K``, ``32K``, ``128K``, as the READMEs write them).
6. **Readable log axes** (``log_axis``): labelled ticks at 1-2-3-...-9, 1-2-5 or 1 per decade, the
   densest of these with at most ``MAX_LOG_TICKS`` in view; within less than a decade plain tick values
   (80, 100, 120 ... 200); minor ticks unlabelled. Values between 10^2 and 10^3 can be read.
7. **Length axes** (``length_axis``): sequence lengths and distances on a log2 axis with ticks at the
   values measured (``number`` labels).
8. **Fixed colours per variant** (halo_lab.report.labels: ``palette``, ``marker``, ``bench_style``):
   a variant has the same colour and marker in every panel, figure and report.
9. **No jitter below zero** (``dodge``): equal points of several series drawn side by side move only in
   x, by a factor on a log axis (a position stays > 0) and within the data's [min, max] on a linear one.
10. **Small multiples** (``panel_groups``): more than ``MAX_SERIES`` series in one panel become one panel
    per group (e.g. per setting of the swept overrides, or per backend), panels sharing their axes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

DPI = 110
MARGIN = 0.05  # of the span, each side of a limit a plot sets itself
MAX_SERIES = 6  # series in one panel; more become small multiples
MAX_LOG_TICKS = 8  # labelled ticks on a log axis
MIN_TICK_GAP = 0.08  # of a length axis' log span between two labelled ticks
FONT = 8  # legend, value labels
LEGEND_ROOM = 2.0  # inches right of the panels for the legend
VALUE_LABEL = "value"  # gid of a bar's value label: ``save`` keeps it inside the frame
REFERENCE = "reference"  # gid of a reference line (chance, window, mean): not a series, may span the axes


# ---------------------------------------------------------------------------------------------- numbers
def number(value: float, _pos: Any = None) -> str:
    """The one number format of every plot (rule 5). ``_pos`` lets it serve as a tick formatter."""
    if value is None or not math.isfinite(value):
        return ""
    if value == 0:
        return "0"
    sign, a = ("-" if value < 0 else ""), abs(float(value))
    unit = ""
    if a >= 1024 and a.is_integer() and a % 1024 == 0:  # a power-of-two length: 1K = 1,024
        for u in ("K", "M"):
            if a >= 1024 and a % 1024 == 0:
                a, unit = a / 1024, u
    elif a >= 1e6:
        a, unit = a / 1e6, "M"
    elif a >= 1e3:
        a, unit = a / 1e3, "K"
    text = f"{a:.4g}"
    if "e" in text:  # tiny values: scientific, still 4 digits at most
        text = f"{a:.3g}"
    return sign + text + unit


def number_formatter():
    """A fresh tick formatter of ``number`` (a formatter belongs to one axis)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(number)


def _axes_of(ax, which: str):
    return {"x": [ax.xaxis], "y": [ax.yaxis], "both": [ax.xaxis, ax.yaxis]}[which]


def format_axis(ax, which: str = "both") -> None:
    """Linear numeric axes: ``number`` tick labels."""
    for axis in _axes_of(ax, which):
        axis.set_major_formatter(number_formatter())


# ---------------------------------------------------------------------------------------------- log axes
def _readable_log_ticks(vmin: float, vmax: float) -> list[float]:
    from matplotlib.ticker import LogLocator, MaxNLocator

    lo, hi = sorted((vmin, vmax))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= 0:
        return []
    lo = max(lo, hi * 1e-12)
    eps = 1e-9 * hi
    if hi / lo < 10:  # less than a decade: plain tick values (80, 100, 120 ... 200), not 80, 90, 100, 200
        for nbins in (5, 9):  # at least 4 labelled when the data allow
            linear = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            inside = [float(t) for t in linear if lo - eps <= t <= hi + eps and t > 0]
            if len(inside) >= 4:
                return inside
        if len(inside) >= 3:
            return inside
    for subs in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1, 3), (1,)):
        ticks = LogLocator(base=10, subs=subs, numticks=100).tick_values(lo, hi)
        inside = [float(t) for t in ticks if lo - eps <= t <= hi + eps]
        if len(inside) <= MAX_LOG_TICKS:
            return inside
    return inside


def _log_locator():
    from matplotlib.ticker import Locator

    class ReadableLogLocator(Locator):
        """Rule 6's ticks for the axis' current view (so it follows later limit changes)."""

        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            return _readable_log_ticks(vmin, vmax)

    return ReadableLogLocator()


def log_axis(ax, which: str = "y") -> None:
    """A base-10 log axis with rule 6's labelled ticks and unlabelled minor ticks."""
    from matplotlib.ticker import LogLocator, NullFormatter

    for axis in _axes_of(ax, which):
        (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
        axis.set_major_locator(_log_locator())
        axis.set_major_formatter(number_formatter())
        axis.set_minor_locator(LogLocator(base=10, subs="all", numticks=100))
        axis.set_minor_formatter(NullFormatter())


def length_axis(ax, values: Iterable[float], which: str = "x") -> None:
    """Sequence lengths or distances: log2 with a labelled tick at each value measured (rule 7); a
    linear axis from 0 when a value is not positive."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    vals = sorted({float(v) for v in values})
    axis = ax.xaxis if which == "x" else ax.yaxis
    if vals and vals[0] > 0:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=2)
        # a label needs room: a value closer than MIN_TICK_GAP of the span to the one labelled before it
        # (512 next to 768 on 2..768) keeps an unlabelled tick
        span = math.log2(vals[-1] / vals[0]) or 1.0
        labelled: list[float] = []
        for v in reversed(vals):  # the largest value keeps its label
            if not labelled or math.log2(labelled[-1] / v) >= MIN_TICK_GAP * span:
                labelled.append(v)
        axis.set_major_locator(FixedLocator(sorted(labelled)))
        rest = [v for v in vals if v not in labelled]
        axis.set_minor_locator(FixedLocator(rest) if rest else NullLocator())
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(number_formatter())


# ---------------------------------------------------------------------------------------------- limits
def padded(lo: float, hi: float, log: bool = False, margin: float = MARGIN) -> tuple[float, float]:
    """[lo, hi] with ``margin`` of the span on each side (of the log span on a log axis)."""
    if log and lo > 0 and hi > 0:
        a, b = math.log(lo), math.log(hi)
        pad = margin * (b - a) or 0.05
        return math.exp(a - pad), math.exp(b + pad)
    pad = margin * (hi - lo) or (0.05 * abs(hi) or 0.05)
    return lo - pad, hi + pad


def dodge(xs: Sequence[float], i: int, n: int, log: bool = True, width: float = 0.05) -> list[float]:
    """Series ``i`` of ``n`` at the same x values, side by side (rule 9): on a log axis each point moves
    by a factor (2 ** (k * width)), so it stays > 0; on a linear axis by a fraction of the span, clipped
    to the data's [min, max] (never below the lowest value, never across 0)."""
    k = i - (n - 1) / 2
    if not xs or n <= 1:
        return list(xs)
    if log and min(xs) > 0:
        return [x * 2 ** (k * width) for x in xs]
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    return [min(max(x + k * width * 0.25 * span, lo), hi) for x in xs]


# ---------------------------------------------------------------------------------------------- figures
def figure(
    ncols: int = 1,
    nrows: int = 1,
    width: float = 4.6,
    height: float = 3.4,
    legend_room: float = LEGEND_ROOM,
    names: float = 0.0,
    **subplots: Any,
):
    """(figure, axes as a 2-D array): Agg canvas, constrained layout (rule 1); ``width``/``height`` per
    panel, plus ``legend_room`` inches for the legend right of the panels (0: no legend) and ``names``
    inches for long tick labels left of them (``name_room``). ``subplots`` go to ``Figure.subplots``
    (sharex, sharey)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols + legend_room + names, height * nrows), layout="constrained")
    fig.legend_room = legend_room  # for ``title``
    FigureCanvasAgg(fig)  # Agg canvas: no display, no pyplot state
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
    return fig, axes


def panel_grid(
    n: int, max_cols: int = 3, width: float = 4.2, height: float = 3.2, legend_room: float = LEGEND_ROOM,
    **subplots: Any,
):  # fmt: skip
    """(figure, list of ``n`` axes) for small multiples: up to ``max_cols`` a row, shared axes unless
    told otherwise, the grid's unused cells removed."""
    ncols = max(1, min(n, max_cols) if n <= max_cols else min(max_cols, math.ceil(math.sqrt(n))))
    nrows = max(1, math.ceil(n / ncols))
    subplots = {"sharex": True, "sharey": True, **subplots}
    fig, axes = figure(ncols, nrows, width=width, height=height, legend_room=legend_room, **subplots)
    flat = list(axes.flat)
    for ax in flat[n:]:
        fig.delaxes(ax)
    for ax in flat[:n]:  # shared axes: every panel keeps its own tick labels (cells may be missing)
        ax.tick_params(labelbottom=True, labelleft=True)
    return fig, flat[:n]


def legend(
    fig,
    axes: Iterable[Any] | None = None,
    title: str | None = None,
    entries: dict | None = None,
    order: Sequence[str] | None = None,
):
    """One legend for the figure, right of the panels (rule 2): the labelled artists of ``axes`` (default
    every axes), first label wins, or ``entries`` (label -> handle). ``order``: names in legend order (a
    label ``NAME (...)`` counts as NAME); other labels (reference lines) follow."""
    handles: dict[str, Any] = dict(entries or {})
    if entries is None:
        for ax in axes if axes is not None else fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
    if not handles:
        return None
    if order is not None:
        rank = {name: k for k, name in enumerate(order)}

        def key(label: str) -> int:
            return rank.get(label, rank.get(label.split(" (")[0], len(rank)))

        handles = {lab: handles[lab] for lab in sorted(handles, key=key)}
    return fig.legend(
        list(handles.values()), list(handles), loc="outside right upper", fontsize=FONT, title=title,
        title_fontsize=FONT - 1, frameon=False, alignment="left",
    )  # fmt: skip


def title(fig, text: str, fontsize: float = 10) -> None:
    """The figure's title, left-aligned and wrapped to the panels' width: the legend's column on the
    right stays free."""
    import textwrap

    room = getattr(fig, "legend_room", LEGEND_ROOM)
    chars = max(20, int((fig.get_figwidth() - room) * 72 / (0.6 * fontsize)))
    fig.suptitle(textwrap.fill(text, chars), x=0.01, ha="left", fontsize=fontsize)


def reference_line(ax, value: float, vertical: bool = False, **kw: Any):
    """A horizontal (or vertical) reference line: chance, a window, a mean; not a series."""
    kw = {"color": "grey", "ls": ":", "lw": 1, "zorder": 1, **kw}
    line = (ax.axvline if vertical else ax.axhline)(value, **kw)
    line.set_gid(REFERENCE)
    return line


def finish(ax, grid_axis: str = "both") -> None:
    ax.grid(alpha=0.3, axis=grid_axis)
    ax.tick_params(labelsize=FONT)


def save(fig, path: str | Path) -> Path:
    """Rule 1: DPI, tight bounding box (a legend right of the panels is never cut); rule 3's value labels
    inside their frames."""
    fit_value_labels(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return Path(path)


def fit_value_labels(fig) -> None:
    """Rule 3: widen each bar panel's value axis until every value label ends inside the frame. The room
    a label needs is known only once the layout has placed the panel, so: draw, measure, widen, again.
    A figure without value labels is not drawn here (savefig draws it once)."""
    panels = [
        (ax, [t for t in ax.texts if t.get_gid() == VALUE_LABEL and t.get_visible()]) for ax in fig.axes
    ]
    panels = [(ax, labels) for ax, labels in panels if labels]
    for _ in range(4 if panels else 0):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        widened = False
        for ax, labels in panels:
            box = ax.get_window_extent(renderer)
            past = max(t.get_window_extent(renderer).x1 for t in labels) - box.x1
            if past > -2:  # pixels past the frame, with 2 of room
                x0, x1 = ax.get_xlim()
                ax.set_xlim(x0, x1 + (past + 4) / box.width * (x1 - x0))
                widened = True
        if not widened:
            return


def name_room(names: Sequence[str], fontsize: float = FONT) -> float:
    """Inches that the longest of ``names`` takes as tick labels (about 0.6 em a character): a figure with
    long bar names adds it to its width, so the panels keep theirs."""
    return max((len(n) for n in names), default=0) * 0.6 * fontsize / 72


# ---------------------------------------------------------------------------------------------- bars
def bars(
    ax,
    names: Sequence[str],
    values: Sequence[float],
    colors: Sequence[Any] | None = None,
    errors: Sequence[float] | None = None,
    value_format: Callable[[float], str] = number,
    xlabel: str | None = None,
):
    """Horizontal bars from zero (rule 3), the first name on top, the value after each bar (after its
    error bar), error bars clipped at 0."""
    ys = list(range(len(names)))
    vals = [float(v) for v in values]
    errs = [float(e or 0.0) for e in errors] if errors is not None else None
    xerr = None
    if errs is not None and any(errs):
        xerr = [[min(e, max(v, 0.0)) for v, e in zip(vals, errs)], errs]  # never below 0
    container = ax.barh(ys, vals, height=0.7, color=colors)
    if xerr is not None:  # only where there is a spread: no zero-width caps
        some = [k for k, e in enumerate(errs) if e > 0]
        ax.errorbar(
            [vals[k] for k in some], [ys[k] for k in some], xerr=[[xerr[0][k] for k in some], [errs[k] for k in some]],
            fmt="none", ecolor="black", capsize=3, lw=1,
        )  # fmt: skip
    ax.set_yticks(ys, list(names), fontsize=FONT)
    ax.set_ylim(len(ys) - 0.4, -0.6)  # first on top; half a bar of room at each end
    top = max((v + (e if errs else 0.0) for v, e in zip(vals, errs or [0.0] * len(vals))), default=0.0)
    ax.set_xlim(0, top * 1.22 if top > 0 else 1.0)  # room for the value labels
    for y, v, e in zip(ys, vals, errs or [0.0] * len(vals)):
        ax.annotate(
            value_format(v), (max(v, 0.0) + e, y), xytext=(3, 0), textcoords="offset points",
            va="center", fontsize=FONT - 1, gid=VALUE_LABEL,
        )  # fmt: skip
    ax.xaxis.set_major_formatter(number_formatter())
    if xlabel:
        ax.set_xlabel(xlabel)
    finish(ax, "x")
    return container


# ---------------------------------------------------------------------------------------------- panels
def panel_groups(
    series: Sequence[str],
    group_of: Callable[[str], str],
    max_series: int = MAX_SERIES,
    always: Iterable[str] = (),
    pack: bool = False,
    order: Callable[[str], Any] | None = None,
) -> list[tuple[str, list[str]]]:
    """Small multiples (rule 10): [(panel title, its series)]. At most ``max_series`` series: one panel
    (title ""). More: one panel per group (``group_of``, first-seen order), the series of ``always``
    (e.g. the dense baseline) repeated in each; ``pack`` fills a panel with whole groups while they fit.
    A group too large for a panel is cut into panels of ``max_series``; ``order`` sorts the groups (a key
    of the group's name; ``natural_key`` reads the numbers in it as numbers)."""
    series = list(dict.fromkeys(series))
    if len(series) <= max_series:
        return [("", series)]
    keep = [s for s in series if s in set(always)]
    room = max(1, max_series - len(keep))
    groups: dict[str, list[str]] = {}
    for s in series:
        if s not in keep:
            groups.setdefault(group_of(s), []).append(s)
    parts: list[tuple[str, list[str]]] = []
    for g, members in sorted(groups.items(), key=lambda kv: order(kv[0])) if order else groups.items():
        chunks = [members[i : i + room] for i in range(0, len(members), room)]
        for k, chunk in enumerate(chunks):
            parts.append((g if len(chunks) == 1 else f"{g} ({k + 1}/{len(chunks)})", chunk))
    if pack:
        packed: list[tuple[str, list[str]]] = []
        for title, members in parts:
            if packed and len(packed[-1][1]) + len(members) <= room:
                packed[-1] = (f"{packed[-1][0]}, {title}", packed[-1][1] + members)
            else:
                packed.append((title, list(members)))
        parts = packed
    return [(title, keep + members) for title, members in parts]


def natural_key(text: str) -> list:
    """``L2, conv3`` < ``L4, conv0`` < ``L10``: the numbers in a name compare as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]
