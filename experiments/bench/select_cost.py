"""The content-selected part's choice in torch (graph/selection.py: select, the kernels' selection_tables):
wall time and peak memory on the CPU, one batch row, 8 query / 2 KV heads, d = 64, the variant's settings
(4 blocks of 16, groups of 16, the 2 best, learned pooling, bound score).

    python experiments/bench/select_cost.py [N ...]       # default 4096 16384 65536

Peak memory is the process's peak RSS growth during the call (ru_maxrss; one N per process), so run one N
per invocation for exact peaks (the default loops and reports each N's growth over the previous peak).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

from halo_lab.config import HaloConfig
from halo_lab.kernels.halo_attention.interface import selection_tables


def main() -> None:
    torch.set_num_threads(1)
    out = []
    for n in [int(a) for a in sys.argv[1:]] or [4096, 16384, 65536]:
        c = HaloConfig(max_seq_len=n, num_layers=1, select_blocks=4, select_pooling="learned", select_score="bound")
        g = torch.Generator().manual_seed(0)
        L, d = c.num_globals + n, c.head_dim
        q = torch.randn(1, c.num_heads, L, d, generator=g)
        k, v = (torch.randn(1, c.num_kv_heads, L, d, generator=g) for _ in range(2))
        u = torch.randn(c.num_kv_heads, d, generator=g) * 0.3
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        selection_tables(q, k, v, c, 32, u)
        wall = time.perf_counter() - t0
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        out.append({"n": n, "wall_s": round(wall, 3), "peak_growth_mb": round(peak, 1)})
        print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main()
