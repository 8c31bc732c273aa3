"""The PNG plots of a report (matplotlib, Agg canvas): loss curves, accuracy by distance, throughput and memory, summary."""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from halo_lab.report.runs import Run
from halo_lab.report.tables import _bucketed

log = logging.getLogger("halo_lab.report")


# ---------------------------------------------------------------------------------------------- plots
def _figure(ncols: int, nrows: int = 1, width: float = 5.2, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows))
    FigureCanvasAgg(fig)  # Agg canvas: no display, no pyplot state
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _colors(labels: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(dict.fromkeys(labels))}


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
    colors = _colors([r.label for r in runs])
    n_seeds = _seed_counts(runs)
    for ax, n in zip(axes[0], lengths):
        seen: set[str] = set()
        tail: list[float] = []  # losses after the first fifth of training: the y range worth seeing
        for r in (r for r in runs if (r.seq_len or 0) == n):
            last = max(int(h["step"]) for h in r.history)
            s, v = _series(r.history, "train/loss")
            if s:
                v = _smooth(v, 5)
                ax.plot(s, v, color=colors[r.label], alpha=0.45, lw=1.0)
                tail += [y for x, y in zip(s, v) if x >= 0.2 * last]
            s, v = _series(r.history, "val/loss")
            if s:
                label = _legend_once(r.label, seen, n_seeds)
                ax.plot(s, v, "o-", color=colors[r.label], lw=1.6, ms=3.5, label=label)
                tail += [y for x, y in zip(s, v) if x >= 0.2 * last]
        if tail:
            lo, hi = min(tail), max(tail)
            pad = 0.08 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{task}: seq_len {n}" if n else task)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="val (dots); train (thin, smoothed)", title_fontsize=7)
    fig.tight_layout()
    path = out / f"{task}_loss.png"
    fig.savefig(path, dpi=110)
    return path


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_accuracy(task: str, runs: list[Run], out: Path) -> Path | None:
    runs = [r for r in runs if r.ok and r.m("val_acc_by_distance")]
    if not runs:
        return None
    lengths = sorted({r.seq_len or 0 for r in runs})
    fig, axes = _figure(len(lengths))
    colors = _colors([r.label for r in runs])
    n_seeds = _seed_counts(runs)
    for ax, n in zip(axes[0], lengths):
        by_label: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in (r for r in runs if (r.seq_len or 0) == n):
            for d, acc in r.m("val_acc_by_distance").items():
                by_label[r.label][int(d)].append(acc)
        for label, pts in by_label.items():
            ds = sorted(pts)
            stats = [_mean_std(pts[d]) for d in ds]
            name = f"{label} (mean of {n_seeds[label]} seeds)" if n_seeds.get(label, 1) > 1 else label
            ax.errorbar(
                ds,
                [m for m, _ in stats],
                yerr=[e for _, e in stats],
                fmt="o-",
                color=colors[label],
                capsize=3,
                label=name,
            )
        window = next((r.m("model_config", {}).get("local_window") for r in runs if r.arch == "halo"), None)
        if window:
            ax.axvline(window, color="grey", ls=":", lw=1)
            ax.text(window, 1.02, f" window {window}", fontsize=7, color="grey")
        ax.set_ylim(-0.03, 1.08)
        ax.set_title(f"{task}: accuracy by distance (seq_len {n})" if n else task)
        if _bucketed(runs):
            ax.set_xlabel("query-to-record distance (bucket: from this edge to the next, tokens)")
            ax.set_ylabel("per-query accuracy")
        else:
            ax.set_xlabel("needle distance (tokens)")
            ax.set_ylabel("answer accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{task}_accuracy_by_distance.png"
    fig.savefig(path, dpi=110)
    return path


def plot_throughput_memory(task: str, runs: list[Run], out: Path) -> Path | None:
    runs = [r for r in runs if r.ok and r.seq_len]
    if len({r.seq_len for r in runs}) < 2:
        return None
    fig, axes = _figure(2)
    colors = _colors([r.label for r in runs])
    for ax, key, ylabel in (
        (axes[0][0], "tokens_per_sec", "training tokens/s"),
        (axes[0][1], "peak_mem_mb", "peak memory (MB)"),
    ):
        for label in colors:
            pts: dict[int, list[float]] = defaultdict(list)
            for r in runs:
                if r.label == label and isinstance(r.m(key), (int, float)):
                    pts[r.seq_len].append(r.m(key))
            xs = sorted(pts)
            if xs:
                ax.plot(xs, [statistics.mean(pts[x]) for x in xs], "o-", color=colors[label], label=label)
        ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.seq_len for r in runs}))
        ax.get_xaxis().set_major_formatter("{x:.0f}")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{task}: {ylabel} vs length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{task}_throughput_memory.png"
    fig.savefig(path, dpi=110)
    return path


def plot_summary(task: str, runs: list[Run], out: Path) -> Path | None:
    """Validation loss and tokens/s per variant (and length): one bar each, the mean with the standard
    deviation as an error bar when several seeds ran."""
    runs = [r for r in runs if r.ok and r.m("val_loss") is not None]
    if not runs:
        return None
    multi_len = len({r.seq_len for r in runs}) > 1
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:  # runs are sorted: groups keep the table's order
        groups[(r.label, r.seq_len)].append(r)
    names = [label + (f"\n{n}" if multi_len else "") for label, n in groups]
    colors = _colors([r.label for r in runs])
    fig, axes = _figure(2, width=max(4.5, 0.7 * len(groups) + 2))
    for ax, key, ylabel in (
        (axes[0][0], "val_loss", "validation loss (nats/token)"),
        (axes[0][1], "tokens_per_sec", "training tokens/s"),
    ):
        stats = [
            _mean_std([r.m(key) for r in g if isinstance(r.m(key), (int, float))] or [0.0])
            for g in groups.values()
        ]
        means = [m for m, _ in stats]
        errs = [e for _, e in stats] if any(len(g) > 1 for g in groups.values()) else None
        bars = ax.bar(
            range(len(groups)), means, yerr=errs, capsize=3, color=[colors[label] for label, _ in groups]
        )
        ax.bar_label(bars, fmt="%.3f" if key == "val_loss" else "%.0f", fontsize=7, padding=2)
        ax.set_xticks(
            range(len(groups)), names, rotation=30 if len(groups) > 3 else 0, ha="right", fontsize=8
        )
        if key == "val_loss":
            lo = min(m - (e or 0) for m, e in zip(means, errs or [0] * len(means)))
            hi = max(m + (e or 0) for m, e in zip(means, errs or [0] * len(means)))
            ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 0.1)), hi + 0.15 * (hi - lo + 0.1))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    multi_seed = any(len(g) > 1 for g in groups.values())
    fig.suptitle(task + (": mean ± std over seeds" if multi_seed else ""))
    fig.tight_layout()
    path = out / f"{task}_summary.png"
    fig.savefig(path, dpi=110)
    return path
