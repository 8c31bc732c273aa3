"""Per-example and per-query accuracy of the retrieval tasks, and accuracy by distance."""

from __future__ import annotations

import torch

from halo_lab.data.synthetic.common import IGNORE_INDEX


def answer_correct(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per example: True when the argmax prediction is right at every scored position ([B] bool). An example
    with no scored position counts as wrong."""
    scored = targets != ignore_index
    right = (logits.argmax(-1) == targets) | ~scored
    return right.all(-1) & scored.any(-1)


def query_correct(
    logits: torch.Tensor, targets: torch.Tensor, num_queries: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per query: True when the argmax prediction is right at every scored position of that query
    ([B, num_queries] bool).

    An example's scored positions, in sequence order, are split into ``num_queries`` equal consecutive
    groups, group ``j`` being query ``j`` (AssociativeRecallDataset scores ``value_len`` tokens per query,
    queries in sequence order). Every example must score the same number of positions, a multiple of
    ``num_queries``."""
    scored = targets != ignore_index
    counts = scored.sum(-1)
    per = int(counts[0]) // num_queries if counts.numel() else 0
    if per < 1 or bool((counts != per * num_queries).any()):
        raise ValueError(
            f"per-query accuracy needs the same number of scored targets in every example, a positive "
            f"multiple of num_queries = {num_queries}; got {counts.tolist()}"
        )
    right = logits.argmax(-1) == targets
    # Boolean indexing keeps row-major order: row b's scored positions in sequence order.
    return right[scored].view(targets.shape[0], num_queries, per).all(-1)


def accuracy_by_distance(
    logits: torch.Tensor, targets: torch.Tensor, distances: torch.Tensor
) -> dict[int, tuple[int, int]]:
    """``{distance: (correct, total)}`` for a batch (sum these over batches). ``distances`` is ``[B]`` (one
    answer per example, NeedleDataset: counts examples) or ``[B, Q]`` (one per query,
    AssociativeRecallDataset: counts queries, see :func:`query_correct`)."""
    if distances.dim() == 2:
        ok = query_correct(logits, targets, distances.shape[1]).reshape(-1)
        distances = distances.reshape(-1)
    else:
        ok = answer_correct(logits, targets)
    out: dict[int, tuple[int, int]] = {}
    for d in distances.unique().tolist():
        sel = distances == d
        out[int(d)] = (int(ok[sel].sum()), int(sel.sum()))
    return out
