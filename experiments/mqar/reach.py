"""Which distances can the HALO-S graph carry a token's content over, at each depth? (issue 14)

A path, not a learned result: position ``t`` can depend on the token at ``s = t - d`` after ``n`` layers
when a chain of ``n`` attention edges of the evaluation graph (each layer's own, random edges included)
leads from ``t`` back to ``s``; with the short causal conv (kernel k) each layer also reaches k - 1
positions further back for free. The table gives, per distance bucket, the share of (t, s) pairs with such
a path, for the full graph and with parts removed, so it says which component carries which distances.
Reachable is necessary, not sufficient, for retrieval: a relay token must also have kept the right record.

    python experiments/mqar/reach.py                        # halo_tiny, window 16, 512 tokens (the CPU scale)
    python experiments/mqar/reach.py --seq-len 4096 --window 64 --layers 2 4 6   # halo_small's graph
"""

from __future__ import annotations

import argparse

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig


def reach(config: HaloConfig, seq_len: int, layers: int, conv: int, sources: torch.Tensor) -> torch.Tensor:
    """[S, seq_len] bool: which positions depend on each source position after ``layers`` blocks."""
    G = config.num_globals
    v = torch.zeros(len(sources), seq_len, dtype=torch.bool)
    v[torch.arange(len(sources)), sources] = True
    for layer in range(layers):
        if conv > 1:  # position u also sees u-1 .. u-conv+1
            c = v.clone()
            for j in range(1, conv):
                c[:, j:] |= v[:, :-j]
            v = c
        idx = graph.full_neighbor_index(config, layer, graph.EVAL_STEP, seq_len, "cpu")[G:] - G
        ok = idx >= 0  # globals (negative after the shift) carry no text: they sit before it
        gathered = v[:, idx.clamp(min=0)] & ok  # [S, L, K]
        v = gathered.any(-1)
    return v


def table(args: argparse.Namespace) -> list[str]:
    W, L = args.window, args.seq_len
    base = dict(local_window=W, max_seq_len=L, hidden_size=32, num_heads=2, num_kv_heads=1)
    variants = {
        "full graph": {},
        "no random": {"num_random": 0},
        "no dilated": {"dilated_offsets": []},
        "local only": {"dilated_offsets": [], "num_random": 0, "num_globals": 0},
    }
    edges = [e for e in args.buckets if e < L]
    sources = torch.arange(0, L - 1, max(1, (L - 1) // args.sources))
    rows = []
    header = ["graph", "layers", "conv"] + [f"d≥{e}" for e in edges]
    rows.append("| " + " | ".join(header) + " |")
    rows.append("|" + "|".join(["---"] * 3 + ["---:"] * len(edges)) + "|")
    for name, over in variants.items():
        config = HaloConfig(**{**base, "num_layers": max(args.layers), **over})
        for n in args.layers:
            for conv in args.conv:
                r = reach(config, L, n, conv, sources)
                cells = []
                for lo, hi in zip(edges, edges[1:] + [L]):
                    hit = tot = 0
                    for i, s in enumerate(sources.tolist()):
                        if s + lo >= L:
                            continue
                        t = torch.arange(s + lo, min(s + hi, L))
                        hit += int(r[i, t].sum())
                        tot += len(t)
                    cells.append(f"{hit / tot:.2f}" if tot else "")
                rows.append("| " + " | ".join([name, str(n), str(conv)] + cells) + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4, 6])
    p.add_argument("--conv", type=int, nargs="+", default=[0, 3])
    p.add_argument("--sources", type=int, default=64, help="source positions sampled over the sequence")
    p.add_argument("--buckets", type=int, nargs="+", default=[1, 16, 32, 64, 128, 256, 384, 1024, 2048])
    args = p.parse_args()
    print(
        f"share of (query t, source s = t - d) pairs with a path from s to t; window {args.window}, "
        f"dilated distances = window x (1, 2, 4, 8), 2 random edges per 128-query block, "
        f"{args.seq_len} tokens; columns: d in [edge, next edge)"
    )
    print("\n".join(table(args)))


if __name__ == "__main__":
    main()
