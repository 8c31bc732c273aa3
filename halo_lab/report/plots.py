"""The PNG plots of a report (matplotlib, Agg canvas): loss curves, accuracy by distance, throughput and memory, summary."""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from halo_lab.report.labels import marker, palette, zorder
from halo_lab.report.runs import Run
from halo_lab.report.tables import _bucketed

log = logging.getLogger("halo_lab.report")


# ---------------------------------------------------------------------------------------------- plots
def _figure(ncols: int, nrows: int = 1, width: float = 5.2, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # constrained layout: labels never overlap, and fig.legend("outside ...") keeps legends off the data
    fig = Figure(figsize=(width * ncols, height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas: no display, no pyplot state
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _legend(fig, axes, title: str | None = None) -> None:
    """One legend for the figure, below the panels: colours are fixed per variant, so it holds for all."""
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        ncol = min(len(handles), 2 * axes.shape[1])  # about two entries per panel's width
        fig.legend(
            list(handles.values()), list(handles), loc="outside lower center", ncol=ncol, fontsize=8,
            title=title, title_fontsize=7, frameon=False,
        )  # fmt: skip


def _thousands(ax, axis: str = "y") -> None:
    """12k instead of 12000 (and 600k instead of 600000) on large-valued axes."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k" if abs(v) >= 1e4 else f"{v:,.0f}")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _style(label: str, colors: dict[str, Any]) -> dict[str, Any]:
    return {"color": colors[label], "marker": marker(label), "zorder": zorder(label)}


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


def _legend_once(label: str, seen: set[str], n_seeds: dict[str, int]) -> str | None:
    """The legend entry of a variant: on its first line only, with the number of seeds when several."""
    if label in seen:
        return None
    seen.add(label)
    n = n_seeds.get(label, 1)
    return f"{label} ({n} seeds)" if n > 1 else label


def _seed_counts(runs: list[Run]) -> dict[str, int]:
    counts: dict[str, set] = defaultdict(set)
    for r in runs:
        counts[r.label].add(r.seed)
    return {k: len(v) for k, v in counts.items()}


def plot_loss(task: str, runs: list[Run], out: Path) -> Path | None:
    runs = [r for r in runs if r.history]
    if not runs:
        return None
    lengths = sorted({r.seq_len or 0 for r in runs})
    fig, axes = _figure(len(lengths))
    n_seeds = _seed_counts(runs)
    colors = palette(r.label for r in runs)
    for ax, n in zip(axes[0], lengths):
        seen: set[str] = set()
        tail: list[float] = []  # losses after the first fifth of training: the y range worth seeing
        for r in (r for r in runs if (r.seq_len or 0) == n):
            st = _style(r.label, colors)
            last = max(int(h["step"]) for h in r.history)
            s, v = _series(r.history, "train/loss")
            if s:
                v = _smooth(v, 5)
                ax.plot(s, v, color=st["color"], alpha=0.45, lw=1.0, zorder=st["zorder"])
                tail += [y for x, y in zip(s, v) if x >= 0.2 * last]
            s, v = _series(r.history, "val/loss")
            if s:
                label = _legend_once(r.label, seen, n_seeds)
                ax.plot(s, v, "-", lw=1.6, ms=4, label=label, **st)
                tail += [y for x, y in zip(s, v) if x >= 0.2 * last]
        if tail:
            lo, hi = min(tail), max(tail)
            pad = 0.08 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{task}: seq_len {n}" if n else task)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
    _legend(fig, axes, "validation (markers); training (thin, smoothed)")
    path = out / f"{task}_loss.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")  # a wide legend is never clipped
    return path


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _chance(runs: list[Run]) -> float | None:
    """1 / records when every run's task has the same number of records (gate.result_of reads it)."""
    from halo_lab.report import gate

    values = {gate.result_of(r).chance for r in runs}
    return values.pop() if len(values) == 1 else None


def plot_accuracy(task: str, runs: list[Run], out: Path) -> Path | None:
    runs = [r for r in runs if r.ok and r.m("val_acc_by_distance")]
    if not runs:
        return None
    lengths = sorted({r.seq_len or 0 for r in runs})
    fig, axes = _figure(len(lengths))
    n_seeds = _seed_counts(runs)
    chance = _chance(runs)
    colors = palette(r.label for r in runs)
    for ax, n in zip(axes[0], lengths):
        by_label: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in (r for r in runs if (r.seq_len or 0) == n):
            for d, acc in r.m("val_acc_by_distance").items():
                by_label[r.label][int(d)].append(acc)
        all_d = sorted({d for pts in by_label.values() for d in pts})
        span = (all_d[-1] - all_d[0]) if len(all_d) > 1 else 1.0
        for i, (label, pts) in enumerate(by_label.items()):
            ds = sorted(pts)
            stats = [_mean_std(pts[d]) for d in ds]
            name = f"{label} (mean of {n_seeds[label]} seeds)" if n_seeds.get(label, 1) > 1 else label
            dodge = (i - (len(by_label) - 1) / 2) * 0.012 * span  # equal points side by side, not stacked
            ax.errorbar(
                [d + dodge for d in ds], [m for m, _ in stats], yerr=[e for _, e in stats], capsize=3,
                ls="--" if label.split()[0] == "dense" else "-", lw=1.5, ms=5, label=name, **_style(label, colors),
            )  # fmt: skip
        if chance is not None:
            ax.axhline(chance, color="black", ls=":", lw=1, zorder=1, label=f"chance ({chance:.2f})")
        window = next((r.m("model_config", {}).get("local_window") for r in runs if r.arch == "halo"), None)
        if window:
            ax.axvline(window, color="grey", ls=":", lw=1, zorder=1)
            ax.text(window, 1.02, f" window {window}", fontsize=7, color="grey")
        ax.set_ylim(-0.03, 1.08)
        ax.set_title(f"{task}: accuracy by distance (seq_len {n})" if n else task)
        if _bucketed(runs):
            ax.set_xlabel("query-to-record distance (bucket start, tokens)")
            ax.set_ylabel("per-query accuracy")
        else:
            ax.set_xlabel("needle distance (tokens)")
            ax.set_ylabel("answer accuracy")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    path = out / f"{task}_accuracy_by_distance.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")  # a wide legend is never clipped
    return path


def plot_throughput_memory(task: str, runs: list[Run], out: Path) -> Path | None:
    runs = [r for r in runs if r.ok and r.seq_len]
    if len({r.seq_len for r in runs}) < 2:
        return None
    fig, axes = _figure(2)
    labels = list(dict.fromkeys(r.label for r in runs))
    colors = palette(labels)
    for ax, key, ylabel in (
        (axes[0][0], "tokens_per_sec", "training tokens/s"),
        (axes[0][1], "peak_mem_mb", "peak memory (MB)"),
    ):
        for label in labels:
            pts: dict[int, list[float]] = defaultdict(list)
            for r in runs:
                if r.label == label and isinstance(r.m(key), (int, float)):
                    pts[r.seq_len].append(r.m(key))
            xs = sorted(pts)
            if xs:
                ax.plot(xs, [statistics.mean(pts[x]) for x in xs], "-", label=label, **_style(label, colors))
        ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.seq_len for r in runs}))
        ax.get_xaxis().set_major_formatter("{x:.0f}")
        ax.minorticks_off()
        _thousands(ax)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{task}: {ylabel} vs length")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    path = out / f"{task}_throughput_memory.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")  # a wide legend is never clipped
    return path


def plot_summary(task: str, runs: list[Run], out: Path) -> Path | None:
    """Validation loss and tokens/s per variant (and length): bars from zero, the mean with the standard
    deviation as an error bar when several seeds ran, the value on each bar."""
    runs = [r for r in runs if r.ok and r.m("val_loss") is not None]
    if not runs:
        return None
    multi_len = len({r.seq_len for r in runs}) > 1
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:  # runs are sorted: groups keep the table's order
        groups[(r.label, r.seq_len)].append(r)
    names = [label + (f"\n{n}" if multi_len else "") for label, n in groups]
    colors = palette(r.label for r in runs)
    if len(groups) > 6:  # many bars: the two panels one above the other, each the full width
        fig, axes = _figure(1, 2, width=max(6.0, 0.55 * len(groups) + 2), height=3.4)
        panels = (axes[0][0], axes[1][0])
    else:
        fig, axes = _figure(2, width=max(4.5, 0.75 * len(groups) + 2))
        panels = (axes[0][0], axes[0][1])
    multi_seed = any(len(g) > 1 for g in groups.values())
    for ax, key, ylabel in (
        (panels[0], "val_loss", "validation loss (nats/token)"),
        (panels[1], "tokens_per_sec", "training tokens/s"),
    ):
        stats = [
            _mean_std([r.m(key) for r in g if isinstance(r.m(key), (int, float))] or [0.0])
            for g in groups.values()
        ]
        means = [m for m, _ in stats]
        errs = [e for _, e in stats] if multi_seed else None
        bars = ax.bar(
            range(len(groups)), means, yerr=errs, capsize=3, color=[colors[label] for label, _ in groups]
        )
        labels = [
            f"{m:.3f}" if key == "val_loss" else (f"{m / 1e3:,.1f}k" if m >= 1e4 else f"{m:,.0f}")
            for m in means
        ]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        ax.set_xticks(range(len(groups)), names, rotation=30 if len(groups) > 4 else 0,
                      ha="right" if len(groups) > 4 else "center", fontsize=8)  # fmt: skip
        ax.set_ylim(0, max(m + (e or 0) for m, e in zip(means, errs or [0] * len(means))) * 1.15 or 1)
        if key == "tokens_per_sec":
            _thousands(ax)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(task + (": mean ± std over seeds" if multi_seed else ""))
    path = out / f"{task}_summary.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")  # a wide legend is never clipped
    return path
