"""recall.py with the blocks chosen by another score at evaluation only (the model as trained):

    SCORE=max|bound|mean python experiments/selection/score_probe.py CHECKPOINT RUN_CONFIG [EXAMPLES]

max: the exact best q . k in each block (the oracle of a token-level choice); bound: Quest's upper bound
from the block keys' elementwise min and max (select_score=bound); mean: the model's own choice. Without
groups (select_group_size=0) only.
"""

import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import recall

from halo_lab.graph import selection as S
from halo_lab.model.attention import masked

MODE = os.environ.get("SCORE", "mean")
orig = S.select


def select(q, k, v, config, positions, pool=None):
    sel = orig(q, k, v, config, positions, pool)
    if MODE == "mean":
        return sel
    G, b = config.num_globals, config.select_block_size
    B, Hq, P, d = q.shape
    Hkv = k.shape[1]
    nb = sel.num_blocks
    qg = q.view(B, Hkv, Hq // Hkv, P, d).float()
    kb = k[:, :, G : G + nb * b].float().reshape(B, Hkv, nb, b, d)
    if MODE == "max":
        s = torch.einsum("bhgpd,bhntd->bhgpnt", qg, kb).amax(-1).sum(2)
    else:  # Quest's bound: sum_d max(q_d * min_d, q_d * max_d)
        lo, hi = kb.amin(3), kb.amax(3)
        s = (
            torch.maximum(qg.unsqueeze(4) * lo[:, :, None, None], qg.unsqueeze(4) * hi[:, :, None, None])
            .sum(-1)
            .sum(2)
        )
    full = torch.cat([s, torch.zeros(*s.shape[:3], sel.summary_k.shape[2] - nb)], -1)
    groups, blocks = S.choose(config, full / math.sqrt(d), sel.candidates, nb)
    sel.blocks, sel.groups = blocks, groups
    return sel


masked.select = select
recall.main()
