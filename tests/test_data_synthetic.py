"""CopyDataset, NeedleDataset and AssociativeRecallDataset (mqar): construction, scoring masks, determinism,
no shortcuts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from halo_lab.data import (
    AssociativeRecallDataset,
    CopyDataset,
    NeedleDataset,
    accuracy_by_distance,
    answer_correct,
    query_correct,
)
from halo_lab.data.synthetic import CONTROL


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
        num_examples=200,
        seq_len=256,
        distances=[24, 60, 120, 200],
        vocab_size=48,
        num_pairs=4,
        key_len=2,
        value_len=2,
        seed=7,
        ask="needle",  # the tests below check the needle itself (training defaults to ask="uniform")
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


def _chi2_uniform(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_needle_rank_is_uniform_over_records_at_every_distance():
    ds = needle(num_examples=2000, num_pairs=5, distances=[30, 60, 120, 200], seed=11)
    ranks = np.zeros((len(ds.distances), ds.num_pairs), dtype=int)
    for i in range(ds.num_examples):
        ex = ds.example(i)
        order = np.argsort(ex["records"])  # records by position: rank 0 is the oldest
        rank = int(np.flatnonzero(order == 0)[0])
        assert rank == ex["rank"]
        ranks[ds.distances.index(ex["distance"]), rank] += 1
        n, q, pl = ex["needle"], ex["query"], ds.pair_len
        spans = sorted([(s, s + pl) for s in ex["records"]] + [(q, ex["answer"] + ds.value_len)])
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # nothing overlaps
        assert q - n == ex["distance"] and max(ex["records"]) < q
    # chi-square, 4 degrees of freedom: 18.5 is p = 0.001 (a fixed or distance-bound rank gives thousands)
    assert _chi2_uniform(ranks.sum(0)) < 18.5, ranks
    for row in ranks:  # uniform at every distance, the shortest (all distractors in the gap) included
        assert _chi2_uniform(row) < 18.5, ranks
    # Needle positions vary for one distance, so the distance does not fix where to look.
    assert len({ds.example(i)["needle"] for i in range(0, 400, 4)}) > 10


def _copier_accuracy(ds, pick) -> tuple[float, float]:
    """Accuracy of a 'model' that answers with the value of the record ``pick(example)`` on the main items
    and on the swapped-key control items."""
    acc = []
    for part in (range(ds.num_examples), range(ds.num_examples, len(ds))):
        right = 0
        for i in part:
            ex = ds.example(i)
            right += np.array_equal(ex["values"][pick(ex)], ex["values"][ex["asked"]])
        acc.append(right / len(part))
    return acc[0], acc[1]


def test_swapped_key_control_scores_shortcuts_at_chance_and_retrieval_at_one():
    ds = needle(num_examples=1500, split="val", seed=5)
    assert ds.control and len(ds) == 3000 and not needle().control  # on for val, off for train
    chance, tol = 1 / ds.num_pairs, 0.045  # about 4 standard deviations of 1500 draws
    for rank in range(ds.num_pairs):  # copy the record at a fixed rank: chance on both
        main, control = _copier_accuracy(ds, lambda ex, r=rank: int(np.argsort(ex["records"])[r]))
        assert abs(main - chance) < tol and abs(control - chance) < tol, (rank, main, control)

    # A position shortcut that always finds the needle (row 0; e.g. "the record at a trained distance"):
    # perfect on the main items, never right on the control, which asks another record.
    assert _copier_accuracy(ds, lambda ex: 0) == (1.0, 0.0)

    def retriever(ex):  # the record whose key the query repeats
        key = ex["seq"][ex["query"] + 1 : ex["query"] + 1 + ds.key_len]
        return int(np.flatnonzero((ex["keys"] == key).all(1))[0])

    assert _copier_accuracy(ds, retriever) == (1.0, 1.0)


def test_training_asks_a_uniform_record_so_position_tells_nothing():
    ds = NeedleDataset(num_examples=2000, seq_len=256, distances=[24, 60, 120, 200], seed=3)
    assert ds.ask == "uniform" and not ds.control
    assert NeedleDataset(seq_len=256, distances=[24], split="val").ask == "needle"
    ranks, distances = np.zeros(4, dtype=int), set()
    for i in range(len(ds)):
        ex = ds.example(i)
        x, y, d = ds[i]
        r = ex["asked"]
        ranks[int(np.flatnonzero(np.argsort(ex["records"]) == r)[0])] += 1
        assert y[y != -100].tolist() == ex["values"][r].tolist()  # scored against the asked record
        assert int(d) == ex["query"] - ex["records"][r]
        distances.add(int(d))
    assert _chi2_uniform(ranks) < 16.3  # 3 degrees of freedom, p = 0.001
    # the asked record sits at the trained distances only about a quarter of the time
    hits = sum(ds[i][2].item() in ds.distances for i in range(len(ds)))
    assert 0.2 < hits / len(ds) < 0.35 and len(distances) > 150
    with pytest.raises(ValueError, match="ask must be one of"):
        NeedleDataset(seq_len=256, distances=[24], ask="oldest")


def test_control_items_share_the_haystack_and_are_labelled():
    ds = needle(split="val")
    for i in range(0, 200, 17):
        main, ctl = ds.example(i), ds.example(200 + i)
        assert not main["control"] and ctl["control"] and ctl["asked"] != 0
        q, a = ctl["query"], ctl["answer"]
        same = np.ones(ds.seq_len + 1, dtype=bool)
        same[q + 1 : q + 1 + ds.key_len] = False
        same[a : a + ds.value_len] = False
        assert np.array_equal(main["seq"][same], ctl["seq"][same])  # only the query's key and answer differ
        assert ctl["seq"][q + 1 : q + 1 + ds.key_len].tolist() == ctl["keys"][ctl["asked"]].tolist()
        x, y, d = ds[200 + i]
        assert int(d) == CONTROL and y[y != -100].tolist() == ctl["values"][ctl["asked"]].tolist()
        assert int(ds[i][2]) == main["distance"]
    assert len(needle(split="val", control=False)) == 200 and len(needle(control=True)) == 400


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
    with pytest.raises(ValueError, match="distance 20 does not fit"):
        needle(distances=[20])  # shorter than four records: the needle cannot be the oldest
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


# ----------------------------------------------------------------------------------- mqar
def mqar(**kw):
    args = dict(
        num_examples=120,
        seq_len=256,
        vocab_size=64,
        num_pairs=10,
        num_queries=5,
        key_len=2,
        value_len=2,
        layout="marked",
    )
    args.update(seed=3)
    args.update(kw)
    return AssociativeRecallDataset(**args)


def _find(seq: np.ndarray, pattern: list[int]) -> list[int]:
    n = len(pattern)
    return [i for i in range(len(seq) - n + 1) if seq[i : i + n].tolist() == pattern]


@pytest.mark.parametrize("kl,vl", [(1, 1), (2, 2), (1, 3)])
def test_mqar_queries_recall_the_one_record_with_their_key(kl, vl):
    ds = mqar(key_len=kl, value_len=vl, vocab_size=96)
    pl = 2 + kl + vl
    for i in range(len(ds)):
        ex = ds.example(i)
        seq, keys, values = ex["seq"], ex["keys"], ex["values"]
        assert len(seq) == ds.seq_len + 1 and seq.min() >= 0 and seq.max() < ds.vocab_size
        # Keys are distinct, and so are values.
        assert len({tuple(k) for k in keys}) == ds.num_pairs == len({tuple(v) for v in values})
        assert len(set(ex["asked"].tolist())) == ds.num_queries  # every query asks a different key
        # Every record sits where it says, and the records come before the queries, which end the sequence.
        for at, k, v in zip(ex["records"], keys, values):
            assert seq[at : at + pl].tolist() == [ds.KEY, *k, ds.VAL, *v]
        assert ex["queries"][0] >= ex["records"][-1] + pl
        assert ex["queries"][-1] + pl == ds.seq_len + 1
        for j, (q, r) in enumerate(zip(ex["queries"], ex["asked"])):
            key = keys[r].tolist()
            assert seq[q] == ds.QUERY and seq[q + 1 : q + 1 + kl].tolist() == key
            a = ex["answers"][j]
            assert a == q + 2 + kl
            # The key occurs exactly once among the records (and once in its query) ...
            assert _find(seq, [ds.KEY, *key, ds.VAL]) == [ex["records"][r]]
            assert _find(seq, [ds.QUERY, *key, ds.VAL]) == [q]
            # ... and the answer is the value stored right after it, and only there before the query.
            answer = seq[a : a + vl].tolist()
            assert answer == values[r].tolist()
            stored = ex["records"][r] + 2 + kl
            assert seq[stored : stored + vl].tolist() == answer
            assert [p for p in _find(seq, answer) if p < q] == [stored]
        # Key and value tokens occur only inside records and queries: the filler gives nothing away.
        inside = np.zeros(len(seq), dtype=bool)
        for at in [*ex["records"], *ex["queries"]]:
            inside[at : at + pl] = True
        assert (seq[~inside] >= ds.value_range[1]).all() and (seq[inside] < ds.value_range[1]).all()


def test_mqar_targets_score_exactly_the_query_values_and_distances_are_exact():
    ds = mqar()
    vl = ds.value_len
    for i in range(30):
        ex = ds.example(i)
        x, y, d = ds[i]
        assert x.shape == y.shape == (ds.seq_len,) and torch.equal(x, torch.from_numpy(ex["seq"][:-1]))
        scored = torch.nonzero(y != -100).flatten().tolist()
        expected = [a - 1 + t for a in ex["answers"].tolist() for t in range(vl)]
        assert scored == expected  # only the queries' value tokens, in query order
        assert y[scored].tolist() == ex["values"][ex["asked"]].ravel().tolist()
        # Distance: first answer token - first value token of the record asked (= query - record start).
        rec_value = ex["records"][ex["asked"]] + 2 + ds.key_len
        assert ex["distances"].tolist() == (ex["answers"] - rec_value).tolist()
        assert d.dtype == torch.long and d.shape == (ds.num_queries,)
        edges = ds.distance_buckets
        for dist, b in zip(ex["distances"].tolist(), d.tolist()):
            assert b in edges and b <= dist and all(e > dist for e in edges if e > b)


def test_mqar_distances_span_short_to_long_and_default_buckets():
    ds = mqar(num_examples=300)
    dist = np.concatenate([ds.example(i)["distances"] for i in range(len(ds))])
    assert dist.min() >= ds.pair_len and dist.max() <= ds.seq_len + 1 - ds.pair_len
    assert dist.min() < 32 and dist.max() > 0.8 * ds.seq_len  # short to long
    assert ds.distance_buckets == [4, 8, 16, 32, 64, 128]  # pair_len 6; longest distance 251
    assert ds.bucket(np.array([6, 7, 8, 127, 128, 251])).tolist() == [4, 4, 8, 64, 128, 128]
    # Which record a query asks is not fixed by its position.
    assert len({int(ds.example(i)["asked"][0]) for i in range(50)}) == ds.num_pairs


def test_mqar_determinism_and_fresh_examples():
    ds = mqar()
    for i in (0, 7):
        a, b = ds[i], mqar()[i]
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(ds[5][0], ds[6][0])
    assert not torch.equal(ds[5][0], mqar(split="val")[5][0])
    assert not torch.equal(ds[5][0], mqar(seed=4)[5][0])
    assert len({tuple(ds.example(i)["keys"][0]) for i in range(100)}) > 50
    # Without filler, the gaps are PAD.
    ex = mqar(filler=False).example(0)
    assert set(ex["seq"].tolist()) <= {0, 1, 2, 3} | set(range(*mqar().value_range)) | set(
        range(*mqar().key_range)
    )
    assert (ex["seq"] == 0).any()
    xb, yb, db = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 256) and db.shape == (4, ds.num_queries)


def test_mqar_bad_configs():
    with pytest.raises(ValueError, match="seq_len 64 is too short .* needs seq_len >= 89"):
        mqar(seq_len=64)
    with pytest.raises(ValueError, match="num_queries must be in \\[1, num_pairs = 10\\].* got 11"):
        mqar(num_queries=11)
    with pytest.raises(ValueError, match="num_queries"):
        mqar(num_queries=0)
    with pytest.raises(ValueError, match="num_pairs must be >= 2 .*got 1"):
        mqar(num_pairs=1, num_queries=1)
    with pytest.raises(ValueError, match="key_len must be >= 1, got 0"):
        mqar(key_len=0)
    with pytest.raises(ValueError, match="value_len must be >= 1, got 0"):
        mqar(value_len=0)
    with pytest.raises(ValueError, match="fewer than num_pairs = 20"):
        mqar(key_len=1, num_pairs=20, vocab_size=64)  # 15 key tokens
    with pytest.raises(ValueError, match="distinct values, fewer than num_pairs = 20"):
        mqar(key_len=2, value_len=1, num_pairs=20, vocab_size=64)
    with pytest.raises(ValueError, match="vocab_size 6 is too small"):
        mqar(vocab_size=6)
    with pytest.raises(ValueError, match="strictly increasing"):
        mqar(distance_buckets=[1, 64, 32])
    with pytest.raises(ValueError, match="start at an edge in \\[1, 6\\].* got 8"):
        mqar(distance_buckets=[8, 64])
    with pytest.raises(ValueError, match="num_examples"):
        mqar(num_examples=0)
    with pytest.raises(IndexError):
        mqar().example(120)


def test_query_correct_and_accuracy_by_distance_per_query():
    ds = mqar(num_queries=4, distance_buckets=[1, 64, 128])
    x, y, d = next(iter(DataLoader(ds, batch_size=6)))
    assert d.shape == (6, 4)
    oracle = torch.full((*y.shape, ds.vocab_size), -5.0)
    oracle.scatter_(-1, y.clamp(min=0).unsqueeze(-1), 5.0)
    assert query_correct(oracle, y, 4).all()
    wrong = oracle.clone()
    # Example 2, query 1: its second value token wrong -> only that query is wrong.
    pos = int(torch.nonzero(y[2] != -100)[1 * ds.value_len + 1])
    wrong[2, pos] = wrong[2, pos].roll(1, -1)
    ok = query_correct(wrong, y, 4)
    assert not ok[2, 1] and ok.sum() == 23
    acc = accuracy_by_distance(wrong, y, d)
    total = {b: int((d == b).sum()) for b in d.unique().tolist()}
    bad = int(d[2, 1])
    assert acc == {b: (n - (b == bad), n) for b, n in total.items()}
    assert sum(n for _, n in acc.values()) == 24
    with pytest.raises(ValueError, match="multiple of num_queries = 3"):
        query_correct(oracle, y, 3)  # 8 scored tokens do not split into 3 queries


# ----------------------------------------------------------------------------------- mqar, zoology layout
def zoo(**kw):
    args = dict(num_examples=150, seq_len=128, vocab_size=64, num_pairs=8, seed=2)
    args.update(kw)
    return AssociativeRecallDataset(**args)


def _answers_after_first_query(ds, i) -> int:
    """How many value tokens of the example's records the input holds at or after its first query."""
    ex = ds.example(i)
    x = ex["input"]
    first = int(ex["queries"].min())
    return int(np.isin(x[first:], ex["values"].ravel()).sum())


@pytest.mark.parametrize("kl", [1, 2])
def test_mqar_zoology_layout_adjacent_pairs_bare_key_queries_every_key_once(kl):
    ds = zoo(key_len=kl, vocab_size=96)
    assert ds.layout == "zoology" and ds.num_queries == ds.num_pairs and ds.pair_len == kl + 1
    for i in range(len(ds)):
        ex = ds.example(i)
        x, y, d = ds[i]
        assert torch.equal(x, torch.from_numpy(ex["input"])) and x.shape == y.shape == (ds.seq_len,)
        pairs = np.concatenate([ex["keys"], ex["values"]], axis=1).ravel()
        assert x[: ds.num_pairs * ds.pair_len].tolist() == pairs.tolist()  # adjacent k v pairs, no markers
        assert sorted(ex["asked"].tolist()) == list(range(ds.num_pairs))  # every key queried once
        assert not np.isin(x.numpy(), [ds.KEY, ds.VAL, ds.QUERY]).any()
        scored = torch.nonzero(y != -100).flatten().tolist()
        assert scored == ex["scored"].tolist()
        for q, r, t in zip(ex["queries"].tolist(), ex["asked"].tolist(), scored):
            assert x[q : q + kl].tolist() == ex["keys"][r].tolist() and t == q + kl - 1  # the bare key
            assert int(y[t]) == int(ex["values"][r][0])
        assert ex["distances"].tolist() == (ex["queries"] - ex["records"][ex["asked"]]).tolist()
        assert d.tolist() == ds.bucket(ex["distances"]).tolist()
        # No answer value anywhere after the records: not after a query key, not in the filler.
        assert _answers_after_first_query(ds, i) == 0
        # Keys occur only in their record and their query.
        keys = x.numpy()[np.isin(x.numpy(), np.arange(*ds.key_range))]
        assert len(keys) == 2 * ds.num_pairs * kl


def test_no_answers_in_the_input_detector_fails_on_the_marked_layout():
    marked = zoo(layout="marked", num_pairs=8, num_queries=4, seq_len=256)
    assert all(_answers_after_first_query(marked, i) > 0 for i in range(20))  # QUERY k VAL v reveals it


def test_a_model_that_excludes_revealed_values_gains_only_on_the_marked_layout():
    """Expected accuracy, per query, of a model that never retrieves but guesses uniformly among the
    in-context values not yet revealed in the input before the query."""

    def per_query(ds):
        acc = np.zeros(ds.num_queries)
        for i in range(len(ds)):
            ex = ds.example(i)
            x, values = ex["input"], ex["values"][:, 0]
            for j, q in enumerate(ex["queries"].tolist()):
                revealed = set(x[ds.num_pairs * ds.pair_len if ds.layout == "zoology" else 0 : q].tolist())
                revealed &= set(values.tolist()) if ds.layout == "zoology" else set()
                if ds.layout == "marked":
                    revealed = {int(values[r]) for r in ex["asked"][:j]}
                acc[j] += 1 / (ds.num_pairs - len(revealed))
        return acc / len(ds)

    zoology = per_query(zoo())
    marked = per_query(zoo(layout="marked", num_queries=8, seq_len=128, vocab_size=64))
    assert np.allclose(zoology, 1 / 8)  # chance on every query, the first and the last alike
    assert np.isclose(marked[0], 1 / 8) and np.isclose(marked[-1], 1.0) and marked.mean() > 0.3


def test_mqar_zoology_bad_configs_and_defaults():
    with pytest.raises(ValueError, match="layout must be one of"):
        zoo(layout="interleaved")
    with pytest.raises(ValueError, match="seq_len 30 is too short .* needs seq_len >= 32"):
        zoo(seq_len=30)
    assert zoo(layout="marked", num_queries=None, seq_len=256).num_queries == 4
    ds = zoo()
    assert ds.min_distance == 2 and ds.max_distance == 126 and ds.distance_buckets == [2, 4, 8, 16, 32, 64]
    dist = np.concatenate([ds.example(i)["distances"] for i in range(len(ds))])
    assert dist.min() >= ds.min_distance and dist.max() <= ds.max_distance and dist.max() > 100
