"""The markdown of a report: the run table, accuracy by distance, mean/std over seeds, the setup lines."""

from __future__ import annotations

import functools
import json
import logging
import math
import statistics
from collections import defaultdict
from typing import Any

from halo_lab.report.runs import Run, _reference

log = logging.getLogger("halo_lab.report")


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


@functools.lru_cache(maxsize=256)
def _keys_per_query(config_json: str, arch: str, seq_len: int) -> float | None:
    from halo_lab.api import estimate_graph_stats  # same layer (tools); only when a table asks

    try:
        return float(estimate_graph_stats(json.loads(config_json), seq_len, arch=arch)["edges_per_token"])
    except (TypeError, ValueError):  # a config this version cannot build: no number, not a failed report
        return None


def keys_per_query(run: Run) -> float | None:
    """Mean keys a text query reads (``estimate_graph_stats``' edges_per_token: globals and the
    content-selected blocks' bound included; dense (N + 1) / 2) for the run's recorded model config."""
    cfg, n = run.m("model_config"), run.seq_len
    if not isinstance(cfg, dict) or not n or run.arch not in ("halo", "dense"):
        return None
    return _keys_per_query(json.dumps(cfg, sort_keys=True), run.arch, int(n))


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
        "keys_per_query",
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
            keys_per_query(r),
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
        "keys/query",
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
            _f(v["keys_per_query"], "{:,.0f}"),
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


def _shared(runs: list[Run], key: str, fmt: str) -> str:
    """One model_config field over the runs, formatted; every value and "(by row)" where the runs differ,
    "" where no run has it."""
    vals = {json.dumps((r.m("model_config") or {}).get(key), sort_keys=True, default=str) for r in runs}
    ordered = [json.loads(v) for v in sorted(vals - {"null"}, key=lambda v: v.rjust(12))]
    if len(ordered) > 1:
        return fmt.format("/".join(str(v) for v in ordered)) + " (by row)"
    return fmt.format(ordered[0]) if ordered else ""


def _model_line(ok: list[Run]) -> str:
    """The model's shape, and the full HALO-S graph's, stating only what the runs share as common."""
    if not any(r.m("model_config") for r in ok):
        return ""
    fields = [("hidden_size", "hidden {}"), ("num_layers", "{} layers"), ("num_heads", "{} heads"),
              ("num_kv_heads", "{} KV heads"), ("vocab_size", "vocabulary {}")]  # fmt: skip
    text = "Model: " + ", ".join(p for p in (_shared(ok, k, f) for k, f in fields) if p)
    halo = [r for r in ok if r.arch == "halo" and r.m("model_config")]
    full = [r for r in halo if r.ablation == "full"] or halo
    graph = [("num_globals", "{} globals"), ("local_window", "window {}"), ("dilated_offsets", "dilated offsets {}"),
             ("dilation_rule", "dilation rule {}"), ("num_random", "{} random edges"),
             ("random_edges", "random-edge placement {}"), ("attention_backend", "backend {}")]  # fmt: skip
    parts = [p for p in (_shared(full, k, f) for k, f in graph) if p]
    if parts:
        text += f"; HALO-S graph{' (full)' if len(full) < len(halo) else ''}: " + ", ".join(parts)
    return text + "."


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
    lines = ["Common setup: " + ", ".join(parts) + "." if parts else ""]
    model = _model_line(ok)
    if model:
        lines.append(model)
    kinds = {r.m("peak_mem_kind") for r in ok} - {None}
    if kinds:
        what = {
            "cuda_max_allocated": "CUDA max allocated memory",
            "cpu_peak_rss": "the process's peak resident set size while training (CPU; it includes what the "
            "process already held, which grows from job to job of a multirun, so compare it only roughly)",
        }
        lines.append("Peak memory: " + "; ".join(what.get(k, k) for k in sorted(kinds)) + ".")
    return [line for line in lines if line]
