"""``audit``: the rules of halo_lab.report.style that a finished figure breaks. tests/test_plot_style.py
runs it on the figures of every plotting site; each check names the axes and what is wrong."""

from __future__ import annotations

import math
import re
from typing import Any

from halo_lab.report.style import MAX_SERIES, REFERENCE, VALUE_LABEL, number

_NUMERIC = re.compile(r"^[-\u2212]?[\d.,]+(e[-+]?\d+)?[KM]?$|^\$.*\$$")


def audit(fig) -> list[str]:
    """The rules a finished figure breaks (empty: none). Checks: no legend inside an axes and none over
    an axes' area (2); bar value axes from 0 (3); every marker inside its axes' view (4); every numeric
    tick label written by ``number`` (5, 6, 7; names of bars are not numbers); no labelled minor tick on
    a log axis (6); at most ``MAX_SERIES`` series (distinct colours of lines that are not reference
    lines) per axes (10); every bar's value label inside its frame (3); no axis label over another
    panel's frame or label."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems: list[str] = []
    legends = list(fig.legends)
    for i, ax in enumerate(fig.axes):
        name = f"axes {i} ({ax.get_title() or ax.get_ylabel()!r})"
        problems += _legend_problems(name, ax, legends, renderer)
        problems += _bar_problems(name, ax)
        for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            problems += _tick_problems(name, which, axis)
        problems += _line_problems(name, ax)
        problems += _value_label_problems(name, ax, renderer)
    return problems + _axis_label_problems(fig, renderer)


def _value_label_problems(name: str, ax, renderer) -> list[str]:
    """Rule 3: a bar's value label ends inside its frame (one pixel of tolerance)."""
    box = ax.get_window_extent(renderer)
    for t in ax.texts:
        if t.get_gid() == VALUE_LABEL and t.get_visible() and t.get_window_extent(renderer).x1 > box.x1 + 1:
            return [f"{name}: the value label {t.get_text()!r} ends past the frame"]
    return []


def _axis_label_problems(fig, renderer) -> list[str]:
    """Panels too narrow for their labels: an axis label over another panel's frame or axis label."""
    boxes = [(ax, ax.get_window_extent(renderer)) for ax in fig.axes]
    labels = [
        (i, which, lab.get_window_extent(renderer))
        for i, ax in enumerate(fig.axes)
        for which, lab in (("x", ax.xaxis.label), ("y", ax.yaxis.label))
        if lab.get_visible() and lab.get_text()
    ]
    problems = []
    for i, which, box in labels:
        others = [b for j, (_, b) in enumerate(boxes) if j != i] + [b for j, _, b in labels if j != i]
        if any(box.overlaps(b) for b in others):
            problems.append(f"axes {i}: its {which} label overlaps another panel or its label")
    return problems


def _legend_problems(name: str, ax, legends: list, renderer) -> list[str]:
    """Rule 2: no legend inside the axes, no figure legend over its area."""
    problems = []
    if ax.get_legend() is not None:
        problems.append(f"{name}: a legend inside the axes")
    box = ax.get_window_extent(renderer)
    for lg in legends:
        if lg.get_window_extent(renderer).overlaps(box):
            problems.append(f"{name}: the figure legend overlaps the axes")
    return problems


def _bar_problems(name: str, ax) -> list[str]:
    """Rule 3: the value axis of every bar container starts at 0."""
    from matplotlib.container import BarContainer

    problems = []
    for c in ax.containers:
        if isinstance(c, BarContainer) and len(c):
            lim = ax.get_xlim() if c.orientation == "horizontal" else ax.get_ylim()
            if min(lim) != 0:
                problems.append(f"{name}: bars do not start at 0 (axis from {min(lim):g})")
    return problems


def _tick_problems(name: str, which: str, axis) -> list[str]:
    """Rules 5-7: the first visible numeric major tick label not written by ``number``; rule 6: no
    labelled minor ticks on a log axis."""
    from matplotlib.ticker import NullFormatter

    problems = []
    bad = _first_foreign_tick(axis)
    if bad is not None:
        v, text = bad
        problems.append(f"{name}: {which} tick {text!r} at {v:g}, not style.number ({number(v)!r})")
    if axis.get_scale() == "log" and not isinstance(axis.get_minor_formatter(), NullFormatter):
        problems.append(f"{name}: labelled minor ticks on the log {which} axis")
    return problems


def _first_foreign_tick(axis) -> tuple[float, str] | None:
    """(location, label) of the first visible major tick in view whose numeric label is not ``number``'s."""
    lo, hi = sorted(axis.get_view_interval())
    for tick in axis.get_major_ticks():
        v, text = tick.get_loc(), tick.label1.get_text()
        if not tick.label1.get_visible() or not text or not (lo <= v <= hi):
            continue
        if text != number(v) and _NUMERIC.match(text.strip()):
            return v, text
    return None


def _line_problems(name: str, ax) -> list[str]:
    """Rules 4 and 10: every marker of a (non-reference, visible) line inside the view; at most
    ``MAX_SERIES`` colours of such lines."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    problems = []
    colours = set()
    for line in ax.get_lines():
        if line.get_gid() == REFERENCE or not line.get_visible():
            continue
        colours.add(str(line.get_color()))
        if line.get_marker() in (None, "None", "", " "):
            continue
        outside = _first_marker_outside(line, x0, x1, y0, y1)
        if outside is not None:
            problems.append(f"{name}: a marker at ({outside[0]:g}, {outside[1]:g}) outside the frame")
    if len(colours) > MAX_SERIES:
        problems.append(f"{name}: {len(colours)} series in one panel (max {MAX_SERIES})")
    return problems


def _first_marker_outside(line, x0: float, x1: float, y0: float, y1: float) -> tuple[Any, Any] | None:
    """The first finite point of ``line`` outside [x0, x1] x [y0, y1], or None."""
    xs, ys = line.get_xdata(orig=False), line.get_ydata(orig=False)
    for x, y in zip(xs, ys):
        if not (math.isfinite(float(x)) and math.isfinite(float(y))):
            continue
        if not (x0 <= x <= x1 and y0 <= y <= y1):
            return x, y
    return None
