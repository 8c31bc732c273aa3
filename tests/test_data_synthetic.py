"""CopyDataset and NeedleDataset: construction, scoring masks, determinism, no shortcuts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from halo_lab.data import CopyDataset, NeedleDataset, accuracy_by_distance, answer_correct


# ----------------------------------------------------------------------------------- copy
def test_copy_layout_and_targets():
    ds = CopyDataset(num_examples=50, seq_len=32, vocab_size=10, seed=1)
    assert len(ds) == 50 and ds.copy_len == 16
    for i in range(10):
        x, y = ds[i]
        assert x.shape == y.shape == (32,)
        seq = torch.cat([x, y[-1:].clamp(min=0)])
        L = ds.copy_len
        payload = x[:L]
        assert x[L] == CopyDataset.SEP and payload.min() >= 2 and payload.max() < 10
        scored = y != -100
        assert scored.sum() == L and torch.equal(y[scored], payload)  # exactly the copy is scored
        assert torch.equal(x[L + 1 : 2 * L], payload[:-1])  # the copy follows the separator
        assert torch.equal(x[1:][scored[:-1]], y[:-1][scored[:-1]])  # scored targets are the next inputs
        assert seq.max() < 10


def test_copy_short_copy_is_padded_and_deterministic():
    ds = CopyDataset(num_examples=5, seq_len=20, vocab_size=8, copy_len=4, seed=0)
    x, y = ds[2]
    assert (x[9:] == CopyDataset.PAD).all() and (y != -100).sum() == 4
    assert torch.equal(ds[2][0], CopyDataset(5, 20, 8, 4, seed=0)[2][0])
    assert not torch.equal(ds[2][0], CopyDataset(5, 20, 8, 4, seed=1)[2][0])
    assert not torch.equal(ds[2][0], CopyDataset(5, 20, 8, 4, seed=0, split="val")[2][0])
    with pytest.raises(ValueError, match="copy_len"):
        CopyDataset(5, 20, 8, copy_len=11)
    with pytest.raises(ValueError, match="vocab_size"):
        CopyDataset(5, 20, 2)


# ----------------------------------------------------------------------------------- needle
def needle(**kw):
    args = dict(
        num_examples=200, seq_len=256, distances=[24, 60, 120, 200], vocab_size=48, num_pairs=4, seed=7
    )
    args.update(kw)
    return NeedleDataset(**args)


def test_needle_construction_distance_and_uniqueness():
    ds = needle()
    kl, vl = ds.key_len, ds.value_len
    for i in range(len(ds)):
        ex = ds.example(i)
        seq, d, a = ex["seq"], ex["distance"], ex["answer"]
        assert len(seq) == ds.seq_len + 1 and seq.max() < ds.vocab_size and seq.min() >= 0
        assert d == ds.distances[i % 4]
        answer = ex["values"][0]
        assert np.array_equal(seq[a : a + vl], answer)
        # The needle's value sits exactly `distance` tokens before the answer, after its key.
        assert np.array_equal(seq[a - d : a - d + vl], answer)
        n = ex["needle"]
        assert (
            seq[n] == ds.KEY
            and np.array_equal(seq[n + 1 : n + 1 + kl], ex["keys"][0])
            and seq[n + 1 + kl] == ds.VAL
        )
        q = ex["query"]
        assert q - n == d and seq[q] == ds.QUERY and np.array_equal(seq[q + 1 : q + 1 + kl], ex["keys"][0])
        # The answer's tokens appear nowhere else: not in the filler, not in any distractor.
        where = np.flatnonzero(np.isin(seq, answer))
        expected = list(range(a - d, a - d + vl)) + list(range(a, a + vl))
        assert where.tolist() == expected
        # Filler is only filler tokens; every record's value tokens are distinct.
        assert len(set(ex["values"].ravel().tolist())) == ds.num_pairs * vl
        keys = [tuple(k) for k in ex["keys"]]
        assert len(set(keys)) == ds.num_pairs


def test_needle_has_no_position_shortcut():
    ds = needle()
    for i in range(len(ds)):
        ex = ds.example(i)
        n, q, pl = ex["needle"], ex["query"], ds.pair_len
        starts = ex["distractors"]
        assert len(starts) == ds.num_pairs - 1
        assert any(n + pl <= s and s + pl <= q for s in starts)  # one between needle and query
        assert any(s + pl <= n for s in starts)  # one before the needle
        spans = sorted([(n, n + pl)] + [(s, s + pl) for s in starts] + [(q, ex["answer"] + ds.value_len)])
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # nothing overlaps
    # Needle positions vary for one distance, so the distance does not fix where to look.
    assert len({ds.example(i)["needle"] for i in range(0, 200, 4)}) > 10


def test_needle_items_targets_and_determinism():
    ds = needle()
    for i in range(20):
        x, y, d = ds[i]
        ex = ds.example(i)
        a = ex["answer"]
        assert x.shape == y.shape == (ds.seq_len,) and d.dtype == torch.long and int(d) == ex["distance"]
        scored = torch.nonzero(y != -100).flatten().tolist()
        assert scored == list(range(a - 1, a - 1 + ds.value_len))  # only the answer is scored
        assert y[scored].tolist() == ex["values"][0].tolist()
        assert torch.equal(x, torch.from_numpy(ex["seq"][:-1]))
    assert torch.equal(ds[5][0], needle()[5][0])
    assert not torch.equal(ds[5][0], ds[9][0])
    assert not torch.equal(ds[5][0], needle(split="val")[5][0])
    xb, yb, db = next(iter(DataLoader(ds, batch_size=8)))
    assert xb.shape == (8, 256) and db.tolist() == [24, 60, 120, 200] * 2


def test_needle_fresh_pairs_per_example():
    ds = needle()
    answers = {tuple(ds.example(i)["values"][0]) for i in range(200)}
    keys = {tuple(ds.example(i)["keys"][0]) for i in range(200)}
    assert len(answers) > 60 and len(keys) > 50  # 11 value tokens give 110 ordered pairs


def test_needle_bad_configs():
    with pytest.raises(ValueError, match="distance 300 does not fit"):
        needle(distances=[300])
    with pytest.raises(ValueError, match="distance 10 does not fit"):
        needle(distances=[10])  # shorter than two records: no room for a distractor in between
    with pytest.raises(ValueError, match="value tokens"):
        needle(vocab_size=16)
    with pytest.raises(ValueError, match="num_pairs"):
        needle(num_pairs=1)


def test_answer_correct_and_accuracy_by_distance():
    ds = needle()
    x, y, d = next(iter(DataLoader(ds, batch_size=8)))
    perfect = torch.full((*y.shape, ds.vocab_size), -5.0)
    perfect.scatter_(-1, y.clamp(min=0).unsqueeze(-1), 5.0)
    assert answer_correct(perfect, y).all()
    wrong = perfect.clone()
    pos = int(torch.nonzero(y[3] != -100)[1])
    wrong[3, pos] = wrong[3, pos].flip(-1)  # one answer token wrong in example 3
    ok = answer_correct(wrong, y)
    assert not ok[3] and ok.sum() == 7
    acc = accuracy_by_distance(wrong, y, d)
    assert acc == {24: (2, 2), 60: (2, 2), 120: (2, 2), 200: (1, 2)}
    assert not answer_correct(perfect[:1], torch.full_like(y[:1], -100)).any()
