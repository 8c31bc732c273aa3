"""Needle-in-a-haystack key-value retrieval at controlled distances, with the swapped-key control."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from halo_lab.data.synthetic.common import IGNORE_INDEX, _split_id, _token_ranges

NEEDLE_ASK = ("needle", "uniform")
CONTROL = -1
"""The ``distance`` label of a control item (NeedleDataset's swapped-key examples): HaloLitModule keeps
items with a negative label out of ``val/acc`` and ``val/acc@D`` and reports them as ``val/acc_control``."""


class NeedleDataset(Dataset):
    """Needle-in-a-haystack key-value retrieval at a controlled distance, the needle at a random rank.

    Each example is ``seq_len + 1`` tokens (input = first ``seq_len``, targets = shifted by one):

    * random filler tokens from a filler range disjoint from keys and values, so the filler never contains
      the answer;
    * ``num_pairs`` key-value records ``KEY k_1..k_kl VAL v_1..v_vl`` with distinct keys, and value tokens
      that are all distinct (no token of one value occurs in another): one is the needle, the others are
      distractors;
    * a query ``QUERY k_1..k_kl VAL`` repeating the needle's key, followed by the answer ``v_1..v_vl``.

    ``distance`` = (position of the first answer token) - (position of the needle's first value token) =
    query start - needle start; it cycles through ``distances`` by index (``distances[i % len]``), so every
    distance is equally represented. **The needle's rank** among the records (0 = the oldest) is drawn
    uniformly from ``0 .. num_pairs - 1`` for every example, independently of the distance: that many
    distractors go before the needle and the rest between the needle and the query, each region's records
    at random positions. So no fixed rank ("copy the oldest / the most recent / the middle record") beats
    chance, 1 / num_pairs. Every distance must leave room for any rank: ``distance >= num_pairs * record
    length`` (the needle plus all distractors in the gap). Every example draws fresh keys, values, filler,
    rank and positions from ``(seed, split, index)``, so nothing can be memorised across examples.

    **Swapped-key control** (``control``; default: on for the val/test splits, off for train): the
    dataset then holds ``2 * num_examples`` items; item ``num_examples + i`` is example ``i`` with the
    query asking a different record (uniformly chosen among the distractors) and scored against that
    record's value, its distance label :data:`CONTROL` (-1). A model that retrieves by key scores the same
    on both; one that copies the record at a fixed rank or at the trained distances (a position shortcut)
    drops to chance or below on the control. The control items also enter the validation loss.

    **What the query asks** (``ask``; default: ``uniform`` for the train split, ``needle`` for val/test):
    ``needle`` asks the needle, at exactly ``distance``; ``uniform`` asks a uniformly chosen record (the
    needle or a distractor), so in training neither the rank nor the distance of the asked record tells
    which record it is, only its key does. Trained on ``ask="needle"``, a model can solve the task by
    position alone ("the record at one of the trained distances"): measured, a dense model reaches 0.75
    on the main validation items with 0.08 on the swapped-key control (experiments/needle/README.md).

    Items are ``(input_ids, targets, distance)``: ``targets`` is -100 except at the ``value_len`` positions
    that predict the answer, so loss and accuracy count only the answer (see :func:`answer_correct`).

    Vocabulary (``vocab_size``, default 64): 0 PAD (reserved, unused), 1 KEY, 2 VAL, 3 QUERY, then
    a quarter of the rest for key tokens, a quarter for value tokens and the remainder for filler.
    Chance: ``1 / num_pairs`` for a model that answers with one of the in-context values, ``1 / n_values``
    (``chance``) for a uniform guess over the value tokens.
    """

    PAD, KEY, VAL, QUERY = 0, 1, 2, 3
    RESERVED = 4

    def __init__(
        self,
        num_examples: int = 10000,
        seq_len: int = 512,
        distances: Sequence[int] = (64, 128, 256),
        vocab_size: int = 64,
        num_pairs: int = 4,
        key_len: int = 1,
        value_len: int = 1,
        seed: int = 0,
        split: str | int = "train",
        control: bool | None = None,
        ask: str | None = None,
    ) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if num_pairs < 2:
            raise ValueError(
                f"num_pairs must be >= 2 (the needle and at least one distractor), got {num_pairs}"
            )
        if key_len < 1 or value_len < 1:
            raise ValueError(f"key_len and value_len must be >= 1, got {key_len}, {value_len}")
        distances = [int(d) for d in ([distances] if isinstance(distances, int) else distances)]
        if not distances:
            raise ValueError("distances must not be empty")
        self.key_range, self.value_range, self.filler_range = _token_ranges(vocab_size, "needle")
        n_key = n_val = self.key_range[1] - self.key_range[0]
        if n_key**key_len < num_pairs:
            raise ValueError(
                f"{n_key} key tokens with key_len {key_len} cannot give {num_pairs} distinct keys"
            )
        if n_val < num_pairs * value_len:
            raise ValueError(
                f"vocab_size {vocab_size} gives {n_val} value tokens, fewer than num_pairs * value_len = "
                f"{num_pairs * value_len}: raise vocab_size or lower num_pairs / value_len"
            )
        self.num_examples, self.seq_len, self.vocab_size = int(num_examples), int(seq_len), int(vocab_size)
        self.num_pairs, self.key_len, self.value_len = int(num_pairs), int(key_len), int(value_len)
        self.seed, self.split = int(seed), _split_id(split)
        self.control = self.split != 0 if control is None else bool(control)
        self.ask = ("uniform" if self.split == 0 else "needle") if ask is None else ask
        if self.ask not in NEEDLE_ASK:
            raise ValueError(f"ask must be one of {NEEDLE_ASK}, got {ask!r}")
        self.distances = distances
        self.pair_len = 2 + key_len + value_len
        self.query_len = 2 + key_len
        self.chance = 1.0 / n_val**value_len
        n, pl = self.num_pairs, self.pair_len
        for d in distances:
            hi = self._last_needle_start(d)
            if d < n * pl or hi < (n - 1) * pl:
                biggest = self.seq_len + 1 - self.query_len - self.value_len - (n - 1) * pl
                raise ValueError(
                    f"needle distance {d} does not fit: every distance must be >= num_pairs * record length "
                    f"= {n * pl} (any rank of the needle: all distractors can sit between needle and query) "
                    f"and at most {biggest} for seq_len {seq_len} with {num_pairs} records"
                )

    def _last_needle_start(self, d: int) -> int:
        return self.seq_len + 1 - self.query_len - self.value_len - d

    def __len__(self) -> int:
        return self.num_examples * (2 if self.control else 1)

    def distance_of(self, idx: int) -> int:
        return self.distances[idx % self.num_examples % len(self.distances)]

    def example(self, idx: int) -> dict[str, Any]:
        """The full sequence and its parts: ``seq`` (seq_len + 1), ``needle``/``query``/``answer`` start
        positions, ``distance``, ``rank`` (the needle's rank among the records, 0 = oldest), ``keys``
        [num_pairs, key_len] and ``values`` (row 0 is the needle's), ``distractors`` (start positions,
        sorted), ``records`` (record ``i``'s start, row order of keys/values) and ``asked`` (the record
        the query asks: 0, the needle, except on a control item, ``control`` True)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for NeedleDataset of length {len(self)}")
        control, idx = idx >= self.num_examples, idx % self.num_examples
        rng = np.random.default_rng([self.seed, self.split, idx])
        d = self.distance_of(idx)
        pl, kl, vl, n = self.pair_len, self.key_len, self.value_len, self.num_pairs
        seq = rng.integers(*self.filler_range, size=self.seq_len + 1)

        keys: list[tuple[int, ...]] = []
        while len(keys) < n:
            k = tuple(int(t) for t in rng.integers(*self.key_range, size=kl))
            if k not in keys:
                keys.append(k)
        values = self.value_range[0] + rng.choice(
            self.value_range[1] - self.value_range[0], size=(n, vl), replace=False
        )
        rank = int(rng.integers(n))  # uniform, whatever the distance (every distance fits every rank)
        p = int(rng.integers(rank * pl, self._last_needle_start(d) + 1))
        q = p + d
        starts = []
        for k, (r0, r1) in ((rank, (0, p)), (n - 1 - rank, (p + pl, q))):
            if k:
                offs = np.sort(rng.integers(0, (r1 - r0) - k * pl + 1, size=k))
                starts += [r0 + int(o) + i * pl for i, o in enumerate(offs)]
        rng.shuffle(starts)  # which distractor record goes where
        other = 1 + int(rng.integers(n - 1))  # the record a control item asks (drawn always: same stream)
        pick = int(rng.integers(n))  # the record a uniform-ask item asks (0 = the needle)

        def put(at: int, key: tuple[int, ...], value: np.ndarray) -> None:
            seq[at] = self.KEY
            seq[at + 1 : at + 1 + kl] = key
            seq[at + 1 + kl] = self.VAL
            seq[at + 2 + kl : at + pl] = value

        put(p, keys[0], values[0])
        for s, key, value in zip(starts, keys[1:], values[1:]):
            put(s, key, value)
        asked = other if control else (pick if self.ask == "uniform" else 0)
        seq[q] = self.QUERY
        seq[q + 1 : q + 1 + kl] = keys[asked]
        seq[q + 1 + kl] = self.VAL
        a = q + self.query_len
        seq[a : a + vl] = values[asked]
        return {
            "seq": seq.astype(np.int64),
            "needle": p,
            "query": q,
            "answer": a,
            "distance": d,
            "rank": rank,
            "keys": np.array(keys),
            "values": values,
            "distractors": sorted(starts),
            "records": np.array([p, *starts]),
            "asked": asked,
            "control": control,
        }

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ex = self.example(idx)
        seq = torch.from_numpy(ex["seq"])
        x = seq[:-1]
        y = torch.full_like(x, IGNORE_INDEX)
        a, vl = ex["answer"], self.value_len
        y[a - 1 : a - 1 + vl] = seq[a : a + vl]  # y[j] predicts seq[j + 1]
        if ex["control"]:
            label = CONTROL
        else:  # the asked record's distance (the needle's, d, unless ask="uniform" picked another)
            label = ex["query"] - int(ex["records"][ex["asked"]])
        return x, y, torch.tensor(label, dtype=torch.long)
