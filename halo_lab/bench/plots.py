"""``bench.png``: curves over the sequence length per part (attention, train_step, decode), in the project's
one plotting style (halo_lab.report.style): a fixed colour and marker per backend
(halo_lab.report.labels.bench_style), lengths on a log2 axis with a tick at each one measured, times on a
log axis with readable ticks, the legend right of the panels. More than ``style.MAX_SERIES`` curves in a
part become small multiples: the attention part's backends grouped into panels with dense in each, the
decode part one panel per batch size (panels of a part share their y axis).

``python -m halo_lab.bench.replot RESULTS.json [OUT.png]`` (``main``) redraws the plot of a saved results
file (the committed ones under experiments/bench/; default OUT: ``bench.png`` next to a ``results.json``,
else the file's name with ``.png``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from halo_lab.report import style
from halo_lab.report.labels import bench_label, bench_style

PARTS = ("attention", "train_step", "decode")
YLABEL = {
    "attention": "median ms (forward + backward)",
    "train_step": "median ms a training step",
    "decode": "tokens/s (all rows of the batch)",
}
TITLE = {"attention": "attention layer", "train_step": "training step", "decode": "decode"}


def _family(variant: str) -> str:
    """The backend a variant belongs to (``hybrid_token`` -> ``hybrid``): one panel group."""
    return variant.removesuffix("_token").removeprefix("halo_")


def panels(rows: list[dict]) -> list[tuple[str, str, list[str], int | None]]:
    """[(panel title, part, variants, batch or None)] of the rows that have a time."""
    out: list[tuple[str, str, list[str], int | None]] = []
    for part in PARTS:
        sel = [r for r in rows if r["part"] == part and r.get("ms") is not None]
        if not sel:
            continue
        variants = list(dict.fromkeys(r["variant"] for r in sel))
        if part == "decode":
            batches = sorted({r.get("batch") for r in sel}, key=lambda b: (b is None, b))
            for b in batches:
                members = [v for v in variants if any(r["variant"] == v and r.get("batch") == b for r in sel)]
                if len(batches) > 1:
                    out.append((f"{TITLE[part]}, batch {b}", part, members, b))
                else:
                    out.append((TITLE[part], part, members, None))
            continue
        groups = style.panel_groups(variants, _family, always=["dense"], pack=True)
        for group, members in groups:
            out.append((f"{TITLE[part]}: {group}" if group else TITLE[part], part, members, None))
    return out


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    """Write ``path`` (nothing when no part has a curve over N, e.g. ``parts=[reference]``)."""
    found = panels(rows)
    if not found:  # e.g. parts=[reference]: its rows are a table, not a curve over N
        return None
    fig, axes = style.panel_grid(len(found), max_cols=3, width=4.4, height=3.3, sharex=False, sharey=False)
    first: dict[str, object] = {}
    for ax, (ptitle, part, variants, batch) in zip(axes, found):
        if part in first:
            ax.sharey(first[part])
        first.setdefault(part, ax)
        sel = [r for r in rows if r["part"] == part and r.get("ms") is not None]
        if batch is not None:
            sel = [r for r in sel if r.get("batch") == batch]
        for variant in variants:
            pts = sorted(
                (r["seq_len"], r["tokens_per_sec"] if part == "decode" else r["ms"])
                for r in sel
                if r["variant"] == variant
            )
            if pts:
                ax.plot(*zip(*pts), label=bench_label(variant), lw=1.6, ms=5, **bench_style(variant))
        style.length_axis(ax, {r["seq_len"] for r in sel})
        style.log_axis(ax, "y")
        ax.set_xlabel("context length" if part == "decode" else "sequence length N")
        ax.set_ylabel(YLABEL[part])
        ax.set_title(ptitle, fontsize=9)
        style.finish(ax)
    style.title(fig, title)
    style.legend(fig, axes)
    return style.save(fig, path)


def title_of(result: dict) -> str:
    """The title ``halo_lab.bench`` (or ``halo_lab.bench.decode``) gives the plot of this result."""
    what = "decode" if "preset" in result else "bench"
    return f"halo_lab {what}: {result.get('device', '?')}, {result.get('dtype', '?')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m halo_lab.bench.replot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("results", type=Path, help="a results.json of python -m halo_lab.bench (or .decode)")
    parser.add_argument("out", type=Path, nargs="?", help="the PNG (default: see the module doc)")
    args = parser.parse_args(argv)
    result = json.loads(args.results.read_text())
    out = args.out or args.results.with_name(
        "bench.png" if args.results.name == "results.json" else args.results.stem + ".png"
    )
    path = plot(result["rows"], out, title_of(result))
    print(path if path is not None else f"{args.results}: no part with a curve over N, no plot")
    return 0
