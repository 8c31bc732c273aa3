"""The PNG plots of a report, in the project's one style (halo_lab.report.style): loss curves, accuracy by
distance, throughput and memory, summary.

A panel holds at most ``style.MAX_SERIES`` variants; a sweep with more (e.g. the retrieval grid's
variants x depths x conv) gets one panel per setting of its swept overrides (``Run.extra``: ``L2 conv3``,
``L4 conv3 6000 steps`` ...), panels sharing their axes, each variant in its fixed colour and named by
its variant alone (the panel title names the setting)."""

from __future__ import annotations

import logging
import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from halo_lab.report import style
from halo_lab.report.labels import marker, palette, zorder
from halo_lab.report.runs import Run, _variant_base
from halo_lab.report.tables import _bucketed

log = logging.getLogger("halo_lab.report")


# ---------------------------------------------------------------------------------------------- panels
class _Panels:
    """The panels of a plot: one per sequence length, and within a length with more than MAX_SERIES
    variant labels one per setting (``Run.extra``). ``split``: some length was cut into settings; then a
    series is named and coloured by its variant alone."""

    def __init__(self, task: str, runs: list[Run]):
        self.lengths = sorted({r.seq_len or 0 for r in runs})
        extra = {r.label: r.extra for r in runs}
        self.base = {r.label: _variant_base(r) for r in runs}
        self.panels: list[tuple[str, int, list[str]]] = []  # (title, seq_len, labels)
        self.split = False
        for n in self.lengths:
            labels = [r.label for r in runs if (r.seq_len or 0) == n]
            groups = style.panel_groups(
                labels, lambda lab: extra.get(lab) or "default", order=style.natural_key
            )
            self.split |= len(groups) > 1
            for setting, members in groups:
                where = f"seq_len {n}" if n and len(self.lengths) > 1 else ""
                title = ", ".join(t for t in (setting, where) if t) or (f"seq_len {n}" if n else "")
                self.panels.append((title, n, members))
        self.names = list(dict.fromkeys(self.name(r.label) for r in runs))  # legend order: the runs'
        self.colors = palette(self.names)
        self.task = task

    def name(self, label: str) -> str:
        return self.base[label] if self.split else label

    def style(self, label: str) -> dict[str, Any]:
        name = self.name(label)
        return {"color": self.colors[name], "marker": marker(name), "zorder": zorder(name)}


def _seed_counts(runs: list[Run]) -> dict[str, int]:
    counts: dict[str, set] = defaultdict(set)
    for r in runs:
        counts[r.label].add(r.seed)
    return {k: len(v) for k, v in counts.items()}


def _seeds_note(panels: _Panels, labels: list[str], n_seeds: dict[str, int], what: str) -> str:
    """Small multiples: which variants of a panel ran several seeds (the legend names variants only);
    ``what`` says how they are drawn, e.g. "{k} seeds, a line each" or "mean of {k} seeds"."""
    many = [lab for lab in labels if n_seeds.get(lab, 1) > 1]
    if not panels.split or not many:
        return ""
    counts = {n_seeds[lab] for lab in many}
    k = counts.pop() if len(counts) == 1 else "several"
    who = "every variant" if len(many) == len(labels) else ", ".join(panels.name(lab) for lab in many)
    return "\n" + textwrap.shorten(what.format(k=k) + ": " + who, 60, placeholder=" …")


def _legend_name(panels: _Panels, label: str, n_seeds: dict[str, int], fmt: str) -> str:
    n = n_seeds.get(label, 1)
    name = panels.name(label)
    return fmt.format(name=name, n=n) if n > 1 and not panels.split else name


# ---------------------------------------------------------------------------------------------- loss
def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts: dict[int, float] = {}
    for rec in history:
        v = rec.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            pts[int(rec["step"])] = float(v)  # a later record of the same step (final validate) wins
    steps = sorted(pts)
    return steps, [pts[s] for s in steps]


def _smooth(vals: list[float], k: int) -> list[float]:
    if k <= 1 or len(vals) < 3:
        return vals
    out, acc = [], 0.0
    for i, v in enumerate(vals):
        acc += v
        if i >= k:
            acc -= vals[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_loss(task: str, runs: list[Run], out: Path) -> Path | None:
    """Validation loss (markers) and training loss (thin, smoothed) by step. The y range holds every
    validation point and the training curve after its first fifth (its early fall may leave the top)."""
    runs = [r for r in runs if r.history]
    if not runs:
        return None
    panels = _Panels(task, runs)
    n_seeds = _seed_counts(runs)
    fig, axes = style.panel_grid(len(panels.panels))
    shown: list[float] = []
    for ax, (title, n, labels) in zip(axes, panels.panels):
        for r in (r for r in runs if (r.seq_len or 0) == n and r.label in labels):
            st = panels.style(r.label)
            last = max(int(h["step"]) for h in r.history)
            s, v = _series(r.history, "train/loss")
            if s:
                v = _smooth(v, 5)
                ax.plot(s, v, color=st["color"], alpha=0.45, lw=1.0, zorder=st["zorder"])
                shown += [y for x, y in zip(s, v) if x >= 0.2 * last]
            s, v = _series(r.history, "val/loss")
            if s:
                name = _legend_name(panels, r.label, n_seeds, "{name} ({n} seeds)")
                ax.plot(s, v, "-", lw=1.6, ms=4, label=name, **st)
                shown += v
        ax.set_title(title + _seeds_note(panels, labels, n_seeds, "{k} seeds, a line each"), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        style.format_axis(ax)
        style.finish(ax)
    if shown:
        axes[0].set_ylim(*style.padded(min(shown), max(shown)))  # shared y: every panel
    style.title(fig, f"{task}: loss")
    style.legend(fig, axes, "validation (markers);\ntraining (thin, smoothed)", order=panels.names)
    return style.save(fig, out / f"{task}_loss.png")


# ---------------------------------------------------------------------------------------------- accuracy
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _chance(runs: list[Run]) -> float | None:
    """1 / records when every run's task has the same number of records (gate.result_of reads it)."""
    from halo_lab.report import gate

    values = {gate.result_of(r).chance for r in runs}
    return values.pop() if len(values) == 1 else None


def plot_accuracy(task: str, runs: list[Run], out: Path) -> Path | None:
    """Accuracy by distance per variant (mean ± std over seeds, the error bar inside [0, 1]; with several
    seeds each seed's own curve drawn faint behind it, since retrieval runs often split into passing and
    failing seeds that a mean hides), distances on a log2 axis with a tick at each one measured, equal
    points dodged by a factor (never below 0)."""
    runs = [r for r in runs if r.ok and r.m("val_acc_by_distance")]
    if not runs:
        return None
    panels = _Panels(task, runs)
    n_seeds = _seed_counts(runs)
    chance = _chance(runs)
    window = next((r.m("model_config", {}).get("local_window") for r in runs if r.arch == "halo"), None)
    distances = sorted({int(d) for r in runs for d in r.m("val_acc_by_distance")})
    fig, axes = style.panel_grid(len(panels.panels), sharey=True, sharex=True)
    xs_drawn: list[float] = []
    faint = False
    for ax, (title, n, labels) in zip(axes, panels.panels):
        seeds: dict[str, list[dict[int, float]]] = {lab: [] for lab in labels}  # a curve per run
        for r in (r for r in runs if (r.seq_len or 0) == n and r.label in labels):
            seeds[r.label].append({int(d): acc for d, acc in r.m("val_acc_by_distance").items()})
        drawn = [(lab, _by_distance(curves)) for lab, curves in seeds.items() if curves]
        for i, (label, pts) in enumerate(drawn):
            ds = sorted(pts)
            faint = _seed_curves(ax, seeds[label], i, len(drawn), panels.style(label)["color"]) or faint
            stats = [_mean_std(pts[d]) for d in ds]
            means = [m for m, _ in stats]
            lower = [min(e, m) for m, e in stats]  # the error bar stays inside [0, 1]
            upper = [min(e, 1.0 - m) if m <= 1.0 else e for m, e in stats]
            xs = style.dodge(ds, i, len(drawn))
            xs_drawn += xs
            ax.errorbar(
                xs, means, yerr=[lower, upper], capsize=3, lw=1.5, ms=5,
                ls="--" if panels.name(label).split()[0] == "dense" else "-",
                label=_legend_name(panels, label, n_seeds, "{name} (mean of {n} seeds)"), **panels.style(label),
            )  # fmt: skip
        if chance is not None:
            style.reference_line(ax, chance, color="black", label=f"chance ({chance:.2f})")
        if window:
            style.reference_line(ax, window, vertical=True, label=f"HALO-S window ({window})")
        ax.set_title(title + _seeds_note(panels, labels, n_seeds, "mean of {k} seeds"), fontsize=9)
        if _bucketed(runs):
            ax.set_xlabel("query-to-record distance (bucket start, tokens)")
            ax.set_ylabel("per-query accuracy")
        else:
            ax.set_xlabel("needle distance (tokens)")
            ax.set_ylabel("answer accuracy")
        style.length_axis(ax, distances)
        style.format_axis(ax, "y")
        style.finish(ax)
    axes[0].set_ylim(*style.padded(0.0, 1.0))
    lo, hi = min(xs_drawn + distances), max(xs_drawn + distances)
    if window and window > 0:
        lo, hi = min(lo, window), max(hi, window)
    axes[0].set_xlim(*style.padded(lo, hi, log=lo > 0))
    style.title(fig, f"{task}: accuracy by distance" + ("; faint lines: each seed" if faint else ""))
    style.legend(fig, axes, order=panels.names)
    return style.save(fig, out / f"{task}_accuracy_by_distance.png")


def _by_distance(curves: list[dict[int, float]]) -> dict[int, list[float]]:
    """The runs' accuracies gathered by distance."""
    pts: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for d, acc in curve.items():
            pts[d].append(acc)
    return pts


def _seed_curves(ax, curves: list[dict[int, float]], i: int, n: int, color: Any) -> bool:
    """Each seed's accuracy by distance, faint and without markers, behind the mean (only for 2+ seeds);
    whether it drew any."""
    for curve in curves if len(curves) > 1 else ():
        ds = sorted(curve)
        ax.plot(style.dodge(ds, i, n), [curve[d] for d in ds], lw=0.8, alpha=0.35, color=color, zorder=1)
    return len(curves) > 1


# ---------------------------------------------------------------------------------------------- speed
def plot_throughput_memory(task: str, runs: list[Run], out: Path) -> Path | None:
    """Training tokens/s and peak memory against the sequence length (log2, a tick at each length), from
    zero; one row of panels per setting when there are more than MAX_SERIES variants."""
    runs = [r for r in runs if r.ok and r.seq_len]
    if len({r.seq_len for r in runs}) < 2:
        return None
    labels = list(dict.fromkeys(r.label for r in runs))
    extra = {r.label: r.extra for r in runs}
    base = {r.label: _variant_base(r) for r in runs}
    rows = style.panel_groups(labels, lambda lab: extra.get(lab) or "default", order=style.natural_key)
    split = len(rows) > 1
    name = (lambda lab: base[lab]) if split else (lambda lab: lab)
    colors = palette(name(lab) for lab in labels)
    fig, axes = style.figure(2, len(rows), width=4.6, height=3.2, sharex=True)
    lengths = sorted({r.seq_len for r in runs})
    for row, (setting, members) in zip(axes, rows):
        for ax, key, ylabel in (
            (row[0], "tokens_per_sec", "training tokens/s"),
            (row[1], "peak_mem_mb", "peak memory (MB)"),
        ):
            for label in members:
                pts: dict[int, list[float]] = defaultdict(list)
                for r in runs:
                    if r.label == label and isinstance(r.m(key), (int, float)):
                        pts[r.seq_len].append(r.m(key))
                xs = sorted(pts)
                if xs:
                    nm = name(label)
                    ax.plot(
                        xs, [statistics.mean(pts[x]) for x in xs], "-", label=nm, color=colors[nm],
                        marker=marker(nm), zorder=zorder(nm),
                    )  # fmt: skip
            ax.set_ylim(bottom=0)
            ax.set_ylim(top=style.padded(0, ax.get_ylim()[1])[1])
            style.length_axis(ax, lengths)
            style.format_axis(ax, "y")
            ax.set_xlabel("sequence length")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{ylabel} vs length" + (f" ({setting})" if split else ""), fontsize=9)
            style.finish(ax)
    style.title(fig, f"{task}: speed and memory (mean over seeds)")
    style.legend(fig, axes.flat, order=[name(lab) for lab in labels])
    return style.save(fig, out / f"{task}_throughput_memory.png")


# ---------------------------------------------------------------------------------------------- summary
def plot_summary(task: str, runs: list[Run], out: Path) -> Path | None:
    """Validation loss and tokens/s per variant (and length): horizontal bars from zero, the mean with the
    standard deviation as an error bar when several seeds ran, the value after each bar."""
    runs = [r for r in runs if r.ok and r.m("val_loss") is not None]
    if not runs:
        return None
    multi_len = len({r.seq_len for r in runs}) > 1
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:  # runs are sorted: groups keep the table's order
        groups[(r.label, r.seq_len)].append(r)
    names = [label + (f" · seq {style.number(n)}" if multi_len and n else "") for label, n in groups]
    colors = palette(r.label for r in runs)
    multi_seed = any(len(g) > 1 for g in groups.values())
    height = max(2.6, 0.26 * len(groups) + 1.3)  # never a strip
    # the names' room on top of the panels' width: long names must not squeeze the panels together
    fig, axes = style.figure(
        2, 1, width=4.0, height=height, legend_room=0, names=style.name_room(names), sharey=True
    )
    for ax, key, xlabel in (
        (axes[0][0], "val_loss", "validation loss (nats/token)"),
        (axes[0][1], "tokens_per_sec", "training tokens/s"),
    ):
        stats = [
            _mean_std([r.m(key) for r in g if isinstance(r.m(key), (int, float))] or [0.0])
            for g in groups.values()
        ]
        style.bars(
            ax, names, [m for m, _ in stats], colors=[colors[label] for label, _ in groups],
            errors=[e for _, e in stats] if multi_seed else None, xlabel=xlabel,
        )  # fmt: skip
    style.title(fig, task + (": mean ± std over seeds" if multi_seed else ""))
    return style.save(fig, out / f"{task}_summary.png")
