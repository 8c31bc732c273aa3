"""HaloLitModule's retrieval metrics on the fixed tasks: the needle's swapped-key control items are kept out
of val/acc and reported as val/acc_control; mqar's first query is reported as val/acc_first_query."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from halo_lab.data import AssociativeRecallDataset, NeedleDataset
from halo_lab.lit import HaloLitModule

TINY = {"vocab_size": 64, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}


class _Table(torch.nn.Module):
    """Stands in for the model: a fixed prediction per input sequence."""

    def __init__(self, preds: dict[bytes, torch.Tensor], vocab: int):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.preds, self.vocab = preds, vocab

    def forward(self, input_ids, targets=None):
        pred = torch.stack([self.preds[row.numpy().tobytes()] for row in input_ids])
        logits = torch.nn.functional.one_hot(pred, self.vocab).float() * 10 + self.dummy
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss


def _validate(ds, preds) -> dict:
    module = HaloLitModule(TINY, arch="halo")
    module.model = _Table(preds, ds.vocab_size)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.validate(module, dataloaders=DataLoader(ds, batch_size=7), verbose=False)
    return module.last_val


def test_needle_control_items_are_reported_apart():
    ds = NeedleDataset(num_examples=21, seq_len=128, distances=[16, 48, 96], split="val")
    assert len(ds) == 42
    preds = {}
    for i in range(len(ds)):  # always answers with the needle's value: right on main items only
        ex = ds.example(i)
        x, y, _ = ds[i]
        pred = y.clamp(min=0).clone()
        pred[y != -100] = torch.as_tensor(ex["values"][0])
        preds[x.numpy().tobytes()] = pred
    val = _validate(ds, preds)
    assert val["val/acc"] == 1.0 and val["val/acc_control"] == 0.0
    assert set(val["val/acc_by_distance"]) == {16, 48, 96}  # no -1 bucket
    assert "val/acc_first_query" not in val


@pytest.mark.parametrize("layout", ["zoology", "marked"])
def test_mqar_first_query_accuracy(layout):
    ds = AssociativeRecallDataset(
        num_examples=20, seq_len=128, vocab_size=64, num_pairs=6, num_queries=6, split="val", layout=layout
    )
    preds = {}
    for i in range(len(ds)):  # right on every query but the first
        x, y, _ = ds[i]
        pred = y.clamp(min=0).clone()
        first = int(torch.nonzero(y != -100)[0])
        pred[first] = (pred[first] + 1) % ds.vocab_size
        preds[x.numpy().tobytes()] = pred
    val = _validate(ds, preds)
    assert val["val/acc_first_query"] == 0.0
    assert val["val/acc"] == pytest.approx(5 / 6) and "val/acc_control" not in val
