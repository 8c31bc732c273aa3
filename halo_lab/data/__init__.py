"""Datasets, corpora and the LightningDataModule.

``from halo_lab.data import TextDataset, JSONLDataset, StreamingDataset, CopyDataset, NeedleDataset,
AssociativeRecallDataset, HaloDataModule``. The datasets need only torch and numpy; Lightning is imported when HaloDataModule is used.
"""

from __future__ import annotations

from typing import Any

from halo_lab.data.corpora import prepare_shakespeare
from halo_lab.data.datasets import DataError, JSONLDataset, TextDataset, TokenWindowDataset
from halo_lab.data.streaming import StreamingDataLoader, StreamingDataset
from halo_lab.data.synthetic import (
    AssociativeRecallDataset,
    CopyDataset,
    NeedleDataset,
    accuracy_by_distance,
    answer_correct,
    query_correct,
)

__all__ = [
    "DataError",
    "TextDataset",
    "JSONLDataset",
    "StreamingDataset",
    "StreamingDataLoader",
    "CopyDataset",
    "NeedleDataset",
    "AssociativeRecallDataset",
    "HaloDataModule",
    "TokenWindowDataset",
    "prepare_shakespeare",
    "answer_correct",
    "query_correct",
    "accuracy_by_distance",
]


def __getattr__(name: str) -> Any:
    if name == "HaloDataModule":
        from halo_lab.data.datamodule import HaloDataModule

        return HaloDataModule
    raise AttributeError(f"module 'halo_lab.data' has no attribute {name!r}")
