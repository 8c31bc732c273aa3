"""``python -m halo_lab.report SWEEP_DIR [--out DIR] [--wandb auto|on|off]``: a sweep directory -> report.

Reads every job of a sweep (``outputs/multirun/<experiment>/<time>/<overrides>/``): its ``metrics.json``
(final summary), ``.hydra/`` (config, overrides, group choices) and ``history.jsonl`` (loss curves), and
writes into ``--out`` (default: the sweep directory itself):

- ``report.md``: per experiment (``task_name``) the common setup, a table with one row per run (variant,
  sequence length, seed, parameters, validation loss, perplexity, bits per token, difference to the
  reference variant, tokens/s, peak memory, accuracy and accuracy by distance on the needle and mqar
  tasks; mqar's distances are bucket edges and its accuracies count queries), a
  mean/std table when several seeds ran, and the jobs that left no ``metrics.json`` (failed/unfinished);
- PNG plots (matplotlib, Agg canvas): ``<experiment>_loss.png`` (train and validation loss per variant),
  ``<experiment>_accuracy_by_distance.png`` (needle, mqar), ``<experiment>_throughput_memory.png`` (when the
  sequence length varies), ``<experiment>_summary.png`` (validation loss and tokens/s per variant).

With ``--wandb on`` (or ``auto`` when wandb is importable and the mode is not ``disabled``) the summary
table and the plots are logged to one W&B run (job_type ``report``, grouped with the experiment's runs);
the mode follows ``$WANDB_MODE`` like the runner's (offline without an API key), files under
``<sweep>/wandb/``. The experiment configs (conf/experiment/) attach :class:`SweepReport` as a Hydra
callback, so every ``+experiment=NAME -m`` sweep writes its report when it ends.

A directory with no job in it, or only foreign ones (no halo_lab config), is an error that says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_lab import gate

log = logging.getLogger("halo_lab.report")

ABLATION_ORDER = ("full", "no_globals", "no_dilated", "no_random", "local_only")
# Override keys that the variant / seq_len / seed columns already show.
SHOWN_KEYS = {"model.arch", "ablation", "variant", "data.seq_len", "seed", "model.max_seq_len"}
REPORT_FILE = "report.md"


class ReportError(ValueError):
    """A directory that cannot be reported on (missing, empty, or not a halo_lab sweep)."""


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class Run:
    path: Path
    name: str  # the job directory relative to the sweep directory
    task: str
    overrides: dict[str, str]
    choices: dict[str, Any]
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""
    extra: str = ""  # the swept overrides the label shows besides arch / ablation (e.g. the model size)

    @property
    def ok(self) -> bool:
        return self.metrics is not None and self.metrics.get("status", "ok") == "ok"

    def m(self, key: str, default: Any = None) -> Any:
        return (self.metrics or {}).get(key, default)

    @property
    def arch(self) -> str:
        return str(self.m("arch") or self.overrides.get("model.arch") or "?")

    @property
    def ablation(self) -> str:
        return str(self.m("ablation") or self.choices.get("ablation") or "full")

    @property
    def seq_len(self) -> int | None:
        v = self.m("seq_len")
        if v is None and "data.seq_len" in self.overrides:
            try:
                v = int(self.overrides["data.seq_len"])
            except ValueError:
                v = None
        return v

    @property
    def seed(self) -> Any:
        return self.m("seed", self.overrides.get("seed"))


def _read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # an unreadable file counts as absent
        return None


def _parse_overrides(items: Any) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: skip it
        if isinstance(rec, dict) and "step" in rec:
            rows.append(rec)
    return rows


def _is_halo_config(cfg: Any) -> bool:
    return isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and "arch" in cfg["model"]


def load_run(job_dir: Path, root: Path) -> Run | None:
    """One job directory (with ``.hydra/config.yaml``) -> Run; None when it is not a halo_lab run."""
    hydra_dir = job_dir / ".hydra"
    cfg = _read_yaml(hydra_dir / "config.yaml")
    if not _is_halo_config(cfg):
        return None
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
    hydra_node = hydra_cfg.get("hydra", {}) if isinstance(hydra_cfg, dict) else {}
    choices = dict((hydra_node.get("runtime") or {}).get("choices") or {})
    overrides = _parse_overrides(_read_yaml(hydra_dir / "overrides.yaml"))
    metrics = None
    mpath = job_dir / "metrics.json"
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text())
        except ValueError:
            metrics = {"status": "unreadable metrics.json"}
        if not isinstance(metrics, dict):
            metrics = {"status": "unreadable metrics.json"}
    task = str((metrics or {}).get("task_name") or cfg.get("task_name") or "train")
    name = str(job_dir.relative_to(root)) if job_dir != root else job_dir.name
    return Run(
        path=job_dir,
        name=name,
        task=task,
        overrides=overrides,
        choices=choices,
        metrics=metrics,
        history=_read_history(job_dir / "history.jsonl"),
    )


def find_runs(sweep_dir: str | Path) -> list[Run]:
    """Every halo_lab job under ``sweep_dir`` (itself included: a single run directory works too)."""
    root = Path(sweep_dir)
    if not root.exists():
        raise ReportError(f"{root}: no such directory")
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory (expected a sweep directory)")
    job_dirs = sorted({p.parent.parent for p in root.rglob(".hydra/config.yaml")})
    job_dirs = [d for d in job_dirs if "wandb" not in d.relative_to(root).parts]
    if not job_dirs:
        raise ReportError(
            f"{root}: no runs found: expected job directories holding .hydra/config.yaml and metrics.json, "
            "as `python -m halo_lab.train -m ...` writes them (outputs/multirun/<experiment>/<time>/)"
        )
    runs = [r for r in (load_run(d, root) for d in job_dirs) if r is not None]
    if not runs:
        raise ReportError(
            f"{root}: not a halo_lab sweep directory: {len(job_dirs)} Hydra job director"
            f"{'y' if len(job_dirs) == 1 else 'ies'} but none written by halo_lab.train "
            "(no model.arch in .hydra/config.yaml)"
        )
    return runs


# ---------------------------------------------------------------------------------------------- variants
def _variant_base(run: Run) -> str:
    if run.arch == "dense":
        return "dense"
    name = "HALO-S" if run.arch == "halo" else run.arch
    return name if run.ablation == "full" else f"{name} {run.ablation}"


def _sort_key(run: Run) -> tuple:
    order = 99 if run.arch == "dense" else 0
    if run.arch != "dense":
        order = ABLATION_ORDER.index(run.ablation) if run.ablation in ABLATION_ORDER else 50
    seed = run.seed if isinstance(run.seed, (int, float)) else 0
    return (run.seq_len or 0, order, run.label, seed, run.name)


def label_runs(runs: list[Run]) -> None:
    """Variant labels: arch + ablation, plus any swept override that those columns do not show."""
    keys = set().union(*(r.overrides for r in runs))
    varying = sorted(k for k in keys if k not in SHOWN_KEYS and len({r.overrides.get(k) for r in runs}) > 1)
    for r in runs:
        extra = [f"{k}={r.overrides[k]}" for k in varying if k in r.overrides]
        r.extra = ", ".join(extra)
        r.label = _variant_base(r) + (f" [{r.extra}]" if extra else "")


def group_by_task(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.task].append(r)
    for task_runs in groups.values():
        label_runs(task_runs)
        task_runs.sort(key=_sort_key)
    return dict(sorted(groups.items()))


def _reference(run: Run, runs: list[Run]) -> Run | None:
    """The run a row is compared with: dense at the same length and seed, else HALO-S full; one with the
    same other swept overrides (e.g. the same model size) first."""
    for want in (lambda r: r.arch == "dense", lambda r: r.arch == "halo" and r.ablation == "full"):
        same = [r for r in runs if r.ok and want(r) and r.seq_len == run.seq_len and r.seed == run.seed]
        for r in sorted(same, key=lambda r: r.extra != run.extra):
            return r
    return None


# ---------------------------------------------------------------------------------------------- formatting
def _f(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, float)):
        return fmt.format(v)
    return str(v)


def _params(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _distances(runs: list[Run]) -> list[int]:
    ds = set()
    for r in runs:
        ds.update(int(d) for d in (r.m("val_acc_by_distance") or {}))
    return sorted(ds)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def summary_rows(runs: list[Run]) -> tuple[list[str], list[list[Any]]]:
    """The per-run summary as plain values (the W&B table and the markdown table share it)."""
    needle = any(r.m("val_acc") is not None for r in runs)
    dists = _distances(runs)
    header = [
        "variant",
        "seq_len",
        "seed",
        "params",
        "steps",
        "val_loss",
        "val_ppl",
        "val_bits_per_token",
        "delta_val_loss_vs_ref",
        "ref",
        "tokens_per_sec",
        "speed_vs_ref",
        "peak_mem_mb",
        "wall_time_s",
    ]
    if needle:
        header += ["val_acc"] + [f"acc@{d}" for d in dists]
    header += ["status", "run"]
    rows = []
    for r in runs:
        ref = _reference(r, runs)
        ref = ref if ref is not None and ref is not r else None
        dl = r.m("val_loss") - ref.m("val_loss") if ref and r.ok and ref.m("val_loss") is not None else None
        tps, rtps = r.m("tokens_per_sec"), ref.m("tokens_per_sec") if ref else None
        speed = tps / rtps if tps and rtps else None
        row = [
            r.label,
            r.seq_len,
            r.seed,
            r.m("params"),
            r.m("steps"),
            r.m("val_loss"),
            r.m("val_ppl"),
            r.m("val_bpt"),
            dl,
            ref.label if ref else None,
            tps,
            speed,
            r.m("peak_mem_mb"),
            r.m("wall_time_s"),
        ]
        if needle:
            by_d = r.m("val_acc_by_distance") or {}
            row += [r.m("val_acc")] + [by_d.get(str(d)) for d in dists]
        row += ["ok" if r.ok else (r.m("status") or "no metrics.json (failed or unfinished)"), r.name]
        rows.append(row)
    return header, rows


def _markdown_runs_table(runs: list[Run]) -> list[str]:
    header, rows = summary_rows(runs)
    col = {h: i for i, h in enumerate(header)}
    needle = "val_acc" in col
    ref_names = sorted({row[col["ref"]] for row in rows if row[col["ref"]]})
    ref_txt = " / ".join(ref_names) if ref_names else "ref"
    out_header = [
        "variant",
        "seq len",
        "batch",
        "seed",
        "params",
        "steps",
        "val loss",
        "val ppl",
        "bits/token",
        f"Δ loss vs {ref_txt}",
        "tokens/s",
        f"speed vs {ref_txt}",
        "peak mem (MB)",
        "wall (s)",
    ]
    if needle:
        out_header += ["acc", "accuracy by distance"]
    out_rows = []
    for row, r in zip(rows, runs):
        if not r.ok:
            continue
        v = {h: row[i] for i, h in enumerate(header)}
        cells = [
            v["variant"],
            _f(v["seq_len"], "{}"),
            _f(r.m("batch_size"), "{}"),
            _f(v["seed"], "{}"),
            _params(v["params"]),
            _f(v["steps"], "{}"),
            _f(v["val_loss"]),
            _f(v["val_ppl"], "{:.3f}"),
            _f(v["val_bits_per_token"], "{:.4f}"),
            _f(v["delta_val_loss_vs_ref"], "{:+.4f}"),
            _f(v["tokens_per_sec"], "{:,.0f}"),
            _f(v["speed_vs_ref"], "{:.2f}x"),
            _f(v["peak_mem_mb"], "{:,.0f}"),
            _f(v["wall_time_s"], "{:,.0f}"),
        ]
        if needle:
            by_d = r.m("val_acc_by_distance") or {}
            cells += [
                _f(v["val_acc"], "{:.3f}"),
                " ".join(f"{d}:{by_d[d]:.2f}" for d in sorted(by_d, key=int)) or "–",
            ]
        out_rows.append(cells)
    return _md_table(out_header, out_rows)


def _bucketed(runs: list[Run]) -> bool:
    """True for the mqar task: distances are bucket edges (metrics.json ``distance_buckets``)."""
    return any(r.m("distance_buckets") for r in runs)


def _accuracy_caption(runs: list[Run]) -> str:
    edges = next((r.m("distance_buckets") for r in runs if r.m("distance_buckets")), None)
    if edges is None:
        return "Needle accuracy by distance (answer fully right; validation set):"
    return (
        "MQAR accuracy by distance (per query: its value fully right; distance = query start - start of the "
        f"record it asks; buckets {edges}: d=E counts the queries at E <= distance < the next edge; "
        "validation set):"
    )


def _accuracy_table(runs: list[Run]) -> list[str]:
    dists = _distances(runs)
    if not dists:
        return []
    multi_len = len({r.seq_len for r in runs}) > 1
    header = (
        ["variant"] + (["seq len"] if multi_len else []) + ["seed", "overall"] + [f"d={d}" for d in dists]
    )
    rows = []
    for r in runs:
        if not r.ok or r.m("val_acc") is None:
            continue
        by_d = r.m("val_acc_by_distance") or {}
        rows.append(
            [r.label]
            + ([_f(r.seq_len, "{}")] if multi_len else [])
            + [_f(r.seed, "{}"), _f(r.m("val_acc"), "{:.3f}")]
            + [_f(by_d.get(str(d)), "{:.3f}") for d in dists]
        )
    return _md_table(header, rows)


def _seed_table(runs: list[Run]) -> list[str]:
    """Mean ± std over seeds per (variant, seq_len), when some variant ran with several seeds."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if r.ok:
            groups[(r.label, r.seq_len)].append(r)
    if not any(len(g) > 1 for g in groups.values()):
        return []

    def ms(vals: list[float], fmt: str) -> str:
        vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
        if not vals:
            return "–"
        if len(vals) == 1:
            return fmt.format(vals[0])
        return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(statistics.stdev(vals))}"

    header = ["variant", "seq len", "seeds", "val loss", "bits/token", "tokens/s"]
    needle = any(r.m("val_acc") is not None for r in runs)
    if needle:
        header.append("acc")
    rows = []
    for (label, seq_len), g in groups.items():
        row = [
            label,
            _f(seq_len, "{}"),
            str(len(g)),
            ms([r.m("val_loss") for r in g], "{:.4f}"),
            ms([r.m("val_bpt") for r in g], "{:.4f}"),
            ms([r.m("tokens_per_sec") for r in g], "{:,.0f}"),
        ]
        if needle:
            row.append(ms([r.m("val_acc") for r in g], "{:.3f}"))
        rows.append(row)
    return _md_table(header, rows)


def _setup_lines(runs: list[Run]) -> list[str]:
    """What every run of the experiment shares (from metrics.json and the group choices)."""
    ok = [r for r in runs if r.ok]
    if not ok:
        return []

    def common(get) -> Any:
        vals = {json.dumps(get(r), sort_keys=True, default=str) for r in ok}
        return get(ok[0]) if len(vals) == 1 else None

    parts = []
    for label, get in (
        ("model option", lambda r: r.choices.get("model")),
        ("data", lambda r: r.choices.get("data")),
        ("steps", lambda r: r.m("steps")),
        ("batch (sequences)", lambda r: r.m("batch_size")),
        ("device", lambda r: r.m("device")),
        ("precision", lambda r: r.m("precision")),
        ("world size", lambda r: r.m("world_size")),
    ):
        v = common(get)
        if v is not None:
            parts.append(f"{label} **{v}**")
    used = {r.m("attention_backend") for r in ok if r.arch == "halo"} - {None}
    if used:
        parts.append("HALO-S attention ran on **" + ", ".join(sorted(used)) + "**")
    mc = ok[0].m("model_config") or {}
    lines = ["Common setup: " + ", ".join(parts) + "." if parts else ""]
    if mc:
        text = (
            f"Model: hidden {mc.get('hidden_size')}, {mc.get('num_layers')} layer{'s' * (mc.get('num_layers') != 1)}, {mc.get('num_heads')} heads "
            f"({mc.get('num_kv_heads')} KV), vocabulary {mc.get('vocab_size')}"
        )
        halo = [r for r in ok if r.arch == "halo"]
        full = next((r for r in halo if r.ablation == "full"), halo[0] if halo else None)
        g = (full.m("model_config") or {}) if full else {}
        if g:
            text += (
                f"; HALO-S graph{' (full)' if len(halo) > 1 else ''}: {g.get('num_globals')} globals, window "
                f"{g.get('local_window')}, dilated offsets {g.get('dilated_offsets')} ({g.get('dilation_rule')}), "
                f"{g.get('num_random')} random edges ({g.get('random_edges')}), backend "
                f"{g.get('attention_backend')}"
            )
        lines.append(text + ".")
    kinds = {r.m("peak_mem_kind") for r in ok} - {None}
    if kinds:
        what = {
            "cuda_max_allocated": "CUDA max allocated memory",
            "cpu_peak_rss": "the process's peak resident set size while training (CPU; it includes what the "
            "process already held, which grows from job to job of a multirun, so compare it only roughly)",
        }
        lines.append("Peak memory: " + "; ".join(what.get(k, k) for k in sorted(kinds)) + ".")
    return [line for line in lines if line]


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


# ---------------------------------------------------------------------------------------------- report
def _commands(sweep_dir: Path, runs: list[Run]) -> list[str]:
    """The commands that made the sweep(s), from Hydra's multirun.yaml next to the job directories (a
    directory holding several sweeps of one experiment lists each)."""
    roots = sorted({r.path.parent for r in runs} | {sweep_dir})
    out = []
    for root in roots:
        cfg = _read_yaml(root / "multirun.yaml")
        if not isinstance(cfg, dict):
            continue
        overrides = ((cfg.get("hydra") or {}).get("overrides") or {}).get("task") or []
        cmd = "python -m halo_lab.train -m " + " ".join(str(o) for o in overrides)
        rel = root.relative_to(sweep_dir) if root != sweep_dir else None
        out.append(f"`{cmd}`" + (f" (`{rel}`)" if rel is not None and len(roots) > 1 else ""))
    return out


def build_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    wandb: str = "off",
    plots: bool = True,
) -> Path:
    """Write report.md (+ plots) for the sweep; returns the report's path. See the module docstring."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    groups = group_by_task(runs)

    n_ok = sum(r.ok for r in runs)
    lines = [
        "# halo_lab sweep report",
        "",
        f"Sweep directory: `{sweep_dir}` — {len(runs)} run{'s' * (len(runs) != 1)}, {n_ok} finished"
        + (f", **{len(runs) - n_ok} failed or unfinished**" if n_ok < len(runs) else "")
        + ".",
    ]
    cmds = _commands(sweep_dir, runs)
    if len(cmds) == 1:
        lines += ["", f"Command: {cmds[0]}"]
    elif cmds:
        lines += ["", "Commands:", ""] + [f"- {c}" for c in cmds] + [""]
    lines += [
        f"Report: `python -m halo_lab.report {sweep_dir}"
        + (f" --out {out}" if out_dir is not None else "")
        + f"` ({time.strftime('%Y-%m-%d %H:%M:%S')}).",
    ]
    images: dict[str, list[Path]] = {}
    for task, task_runs in groups.items():
        lines += ["", f"## {task}", ""]
        lines += gate.report_lines(task_runs)  # the dense gate of needle / mqar (halo_lab/gate.py)
        lines += _setup_lines(task_runs)
        lines += ["", *_markdown_runs_table(task_runs)]
        acc = _accuracy_table(task_runs)
        if acc:
            lines += ["", _accuracy_caption(task_runs), "", *acc]
        seeds = _seed_table(task_runs)
        if seeds:
            lines += ["", "Mean ± standard deviation over seeds:", "", *seeds]
        failed = [r for r in task_runs if not r.ok]
        if failed:
            lines += ["", "Runs without a result (no metrics.json: the job failed or has not finished):", ""]
            lines += [f"- `{r.name}`" for r in failed]
        lines += [
            "",
            "val loss: mean cross-entropy per scored token (nats) of the final weights on the validation set; "
            "bits/token = val loss / ln 2 (bits per byte with the byte-level tokenizer); Δ and speed are "
            "relative to the reference variant at the same length and seed; tokens/s counts training "
            "steps only (forward, backward, optimizer).",
        ]
        if plots:
            paths = [
                p
                for p in (
                    plot_loss(task, task_runs, out),
                    plot_accuracy(task, task_runs, out),
                    plot_throughput_memory(task, task_runs, out),
                    plot_summary(task, task_runs, out),
                )
                if p is not None
            ]
            images[task] = paths
            if paths:
                lines += [""] + [f"![{p.stem}]({p.name})" for p in paths]
    report = out / REPORT_FILE
    tmp = out / f".{REPORT_FILE}.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(report)
    if _want_wandb(wandb):
        log_to_wandb(groups, images, sweep_dir)
    return report


# ---------------------------------------------------------------------------------------------- W&B
def _wandb_mode() -> str:
    from halo_lab.run_utils import wandb_mode

    return wandb_mode(None)


def _want_wandb(setting: str) -> bool:
    if setting not in ("auto", "on", "off"):
        raise ReportError(f"--wandb {setting!r}: must be auto, on or off")
    if setting == "off":
        return False
    try:
        import wandb  # noqa: F401
    except ImportError:
        if setting == "on":
            raise ReportError("--wandb on: wandb is not installed") from None
        return False
    return setting == "on" or _wandb_mode() != "disabled"


def log_to_wandb(groups: dict[str, list[Run]], images: dict[str, list[Path]], sweep_dir: Path) -> None:
    """One W&B run per experiment (job_type ``report``, the experiment's group): the summary table and
    the plots. ``wandb.finish()`` always runs, so a report never merges into a later run."""
    import wandb

    mode = _wandb_mode()
    for task, runs in groups.items():
        project = "halo_lab"
        cfg = _read_yaml(runs[0].path / ".hydra" / "config.yaml") or {}
        wb = ((cfg.get("logger") or {}).get("wandb") or {}) if isinstance(cfg, dict) else {}
        if isinstance(wb.get("project"), str) and "${" not in wb["project"]:
            project = wb["project"]
        header, rows = summary_rows(runs)
        run = wandb.init(
            project=project,
            group=task,
            job_type="report",
            name=f"report-{task}-{sweep_dir.name}",
            dir=str(sweep_dir),
            mode=mode,
            config={"sweep_dir": str(sweep_dir), "runs": len(runs)},
            reinit="finish_previous",
        )
        try:
            table = wandb.Table(columns=header, data=[[_wb_cell(v) for v in row] for row in rows])
            payload: dict[str, Any] = {"summary": table}
            for p in images.get(task, []):
                payload[f"plots/{p.stem.removeprefix(f'{task}_')}"] = wandb.Image(str(p))
            run.log(payload)
        finally:
            run.finish()
        log.info("W&B (%s): logged the %s summary table (%d rows)", mode, task, len(rows))


def _wb_cell(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    return str(v)


# ---------------------------------------------------------------------------------------------- Hydra hook
try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class SweepReport(_HydraCallback):
    """Hydra callback (``hydra.callbacks.report`` in conf/experiment/): rebuilds the sweep's report after
    every job (so a failed job still leaves a report of the others) and, when the sweep ends, logs the
    summary table to W&B. Also refuses to start a sweep in an existing sweep directory (two launches in
    the same second), so a re-run never writes into an earlier sweep. Never fails a job."""

    def __init__(self, wandb: str = "auto", plots: bool = True):
        self.wandb = wandb
        self.plots = plots

    @staticmethod
    def _sweep_dir(config: Any) -> Path | None:
        try:
            return Path(str(config.hydra.sweep.dir))
        except Exception:
            return None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep = self._sweep_dir(config)
        if sweep is None:
            return
        try:
            sweep.mkdir(parents=True, exist_ok=False)  # atomic: exactly one launch owns the directory
        except FileExistsError:
            msg = (
                f"sweep directory {sweep} already exists (another sweep started in the same second?): "
                "refusing to write into it; start again or pass hydra.sweep.dir=<a new directory>"
            )
            log.error(msg)
            print(f"halo_lab: error: {msg}", file=sys.stderr, flush=True)
            # SystemExit, not an exception: Hydra turns a callback's exception into a warning and goes on.
            raise SystemExit(1) from None

    def _report(self, config: Any, wandb: str) -> None:
        from hydra.types import RunMode

        try:
            if config.hydra.mode != RunMode.MULTIRUN:
                return  # a single run (or a DDP rank relaunched by Lightning) has no sweep to report
        except Exception:
            return
        sweep = self._sweep_dir(config)
        if sweep is None:
            return
        try:
            path = build_report(sweep, wandb=wandb, plots=self.plots)
            log.info("sweep report: %s", path)
        except Exception as exc:  # a report must never fail the sweep
            log.warning("sweep report not written: %s", exc)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        self._report(config, wandb="off")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._report(config, wandb=self.wandb)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m halo_lab.report",
        description="Turn a halo_lab sweep directory into report.md + PNG plots (and a W&B summary table).",
    )
    parser.add_argument("sweep_dir", help="e.g. outputs/multirun/baseline/2026-01-01_12-00-00")
    parser.add_argument("--out", default=None, help="where report.md and the plots go (default: SWEEP_DIR)")
    parser.add_argument(
        "--wandb",
        default="auto",
        choices=("auto", "on", "off"),
        help="log the summary table to W&B: auto = when wandb is installed and WANDB_MODE is not "
        "disabled (offline unless WANDB_API_KEY is set or WANDB_MODE=online)",
    )
    parser.add_argument("--no-plots", action="store_true", help="only report.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build_report(args.sweep_dir, args.out, wandb=args.wandb, plots=not args.no_plots)
    except ReportError as exc:
        print(f"halo_lab.report: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
