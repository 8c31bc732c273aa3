"""How many key tiles a query tile of the selected path loops over, counted from the kernels' own tables
(no kernel runs: a CPU count, not a timing), at the attention bench's shapes (B*N = 65,536, 8 query / 2 KV
heads, d = 64, the variant's settings ``halo_lab.bench.attention.SELECT``, 32 positions a tile as in bf16).

    python experiments/bench/select_tile_work.py OUT.json [N ...]      # default 1024 4096 16384 65536

Per query tile, averaged over the tiles: the distinct chosen blocks (``TBN``; a [16, d] key tile each until
2026-12-05, two to a [32, d] key tile now), the
block summaries as the kernels scanned them until 2026-12-05 (every candidate, [32, d] tiles from 0) and as
they scan them now (the distinct chosen groups, ``TGN``, two to a [32, d] tile, and the blocks past the rows'
complete groups, [32, d] tiles), and the group summaries ([32, d] tiles). In the dQ pass each of these tiles
also adds its keys' dK/dV to fp32 buffers by atomics. Random q/k/v at the selection's init (pooling weights
zero): rows of a trained model choose alike more often, so the distinct counts here are an upper side.
"""

from __future__ import annotations

import json
import sys

import torch

from halo_lab.bench.attention import SELECT
from halo_lab.config import HaloConfig
from halo_lab.graph.selection import candidate_blocks
from halo_lab.kernels.halo_attention.interface import selection_tables

BLOCK_T, SUM_N = 32, 32
BPT = GPT = 2  # chosen blocks (groups) per key tile, 32 // 16 (selected.py)


def tile_counts(n: int, seed: int = 0) -> dict:
    batch = max(1, 65536 // n)
    c = HaloConfig(num_heads=8, num_kv_heads=2, hidden_size=512, max_seq_len=max(n, 1024)).replace(**SELECT)
    G, m = c.num_globals, c.select_group_size
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, h, G + n, 64, generator=gen) for h in (8, 2, 2))
    pool = torch.zeros(2, 64)
    _, _, sel = selection_tables(q, k, v, c, BLOCK_T, pool)
    pos = torch.arange(G + n) - G
    cand = torch.where(pos >= 0, candidate_blocks(c, pos.clamp(min=0)), 0)
    is_text = pos >= 0
    nt = sel.nt
    pad = nt * BLOCK_T - (G + n)
    c_t = torch.nn.functional.pad(cand, (0, pad)).view(nt, BLOCK_T)
    text_t = torch.nn.functional.pad(is_text, (0, pad)).view(nt, BLOCK_T)
    c_hi = c_t.max(1).values
    lo = torch.where(text_t, c_t // m * m, c_hi[:, None]).min(1).values
    ceil = lambda x: -(-x // SUM_N)  # noqa: E731
    old = ceil(c_hi).float()
    loose = ceil(c_hi - lo).float()
    groups = (-(-sel.tgn // GPT)).float()  # [B, Hkv, NT] key tiles of chosen groups' blocks
    return {
        "n": n,
        "batch": batch,
        "query_tiles": nt,
        "chosen_blocks": float(sel.tbn.float().mean()),
        "chosen_key_tiles_now": float((-(-sel.tbn // BPT)).float().mean()),
        "block_summary_tiles_before": float(old.mean()),
        "block_summary_tiles_now": float((groups + loose).mean()),
        "chosen_group_tiles": float(groups.mean()),
        "loose_block_tiles": float(loose.mean()),
        "group_summary_tiles": float(ceil(c_hi // m).float().mean()),
    }


def main(out_path: str, sizes: list[int]) -> None:
    rows = [tile_counts(n) for n in (sizes or [1024, 4096, 16384, 65536])]
    keys = [k for k in rows[0] if k not in ("n", "batch")]
    print("| N | " + " | ".join(keys) + " |")
    for r in rows:
        print(f"| {r['n']} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |")
    with open(out_path, "w") as f:
        json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], [int(a) for a in sys.argv[2:]])
