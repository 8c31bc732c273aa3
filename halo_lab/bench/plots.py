"""``bench.png``: one panel per part with a curve over N (attention, train_step, decode)."""

from __future__ import annotations

from pathlib import Path


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("attention", "train_step", "decode") if any(r["part"] == p for r in rows)]
    if not parts:  # e.g. parts=[reference]: its rows are a table, not a curve over N
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        sel = [r for r in rows if r["part"] == part and r.get("ms") is not None]
        many = part == "decode" and len({r.get("batch") for r in sel}) > 1

        def label(r, many=many):
            return f"{r['variant']} B={r['batch']}" if many else r["variant"]

        for variant in dict.fromkeys(label(r) for r in sel):
            pts = sorted(
                (r["seq_len"], r["tokens_per_sec"] if part == "decode" else r["ms"])
                for r in sel
                if label(r) == variant
            )
            ax.plot(*zip(*pts), marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length" if part == "decode" else "sequence length N")
        ax.set_ylabel("tokens/s (all rows)" if part == "decode" else "median ms")
        ax.set_title(part)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
