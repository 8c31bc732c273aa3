"""``build_report``: a sweep directory -> report.md + plots (+ the W&B summary)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from halo_lab.report import gate
from halo_lab.report.plots import plot_accuracy, plot_loss, plot_summary, plot_throughput_memory
from halo_lab.report.runs import REPORT_FILE, Run, _read_yaml, find_runs, group_by_task
from halo_lab.report.tables import (
    _accuracy_caption,
    _accuracy_table,
    _markdown_runs_table,
    _seed_table,
    _setup_lines,
)
from halo_lab.report.wandb_log import _want_wandb, log_to_wandb

log = logging.getLogger("halo_lab.report")


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
