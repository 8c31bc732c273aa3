"""Synthetic tasks with exactly known answers: CopyDataset, NeedleDataset and AssociativeRecallDataset.

All are map-style and deterministic: example ``i`` is generated from ``(seed, split, i)``, so the same
index always gives the same example in any worker or rank, and train / val / test (``split``) never share
a random stream. They use their own small vocabularies (``vocab_size``) with a few reserved ids; the model's
vocabulary must be at least that large. Unscored target positions hold -100 (the loss's ignore_index).

Modules: ``common`` (ignore index, split ids, the retrieval vocabulary), ``copy_task``, ``needle``, ``mqar``
(one task each), ``scoring`` (answer / per-query accuracy, accuracy by distance).
"""

from __future__ import annotations

from halo_lab.data.synthetic.common import IGNORE_INDEX
from halo_lab.data.synthetic.copy_task import CopyDataset
from halo_lab.data.synthetic.mqar import MQAR_LAYOUTS, AssociativeRecallDataset
from halo_lab.data.synthetic.needle import CONTROL, NEEDLE_ASK, NeedleDataset
from halo_lab.data.synthetic.scoring import accuracy_by_distance, answer_correct, query_correct

__all__ = [
    "IGNORE_INDEX",
    "CONTROL",
    "NEEDLE_ASK",
    "MQAR_LAYOUTS",
    "CopyDataset",
    "NeedleDataset",
    "AssociativeRecallDataset",
    "answer_correct",
    "query_correct",
    "accuracy_by_distance",
]
