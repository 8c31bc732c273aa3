"""Synthetic tasks with exactly known answers: CopyDataset, NeedleDataset and AssociativeRecallDataset.

All are map-style and deterministic: example ``i`` is generated from ``(seed, split, i)``, so the same
index always gives the same example in any worker or rank, and train / val / test (``split``) never share
a random stream. They use their own small vocabularies (``vocab_size``) with a few reserved ids; the model's
vocabulary must be at least that large. Unscored target positions hold -100 (the loss's ignore_index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100
_SPLITS = {"train": 0, "val": 1, "validation": 1, "test": 2}


def _split_id(split: str | int) -> int:
    if isinstance(split, int):
        return split
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    return _SPLITS[split]


def _token_ranges(vocab_size: int, task: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Key, value and filler id ranges of the retrieval tasks: ids 0-3 reserved (PAD, KEY, VAL, QUERY),
    then a quarter of the rest for keys, a quarter for values, the remainder for filler."""
    free = vocab_size - 4
    n_key = free // 4
    if n_key < 1 or free - 2 * n_key < 1:
        raise ValueError(f"vocab_size {vocab_size} is too small for the {task} task (>= 8)")
    keys = (4, 4 + n_key)
    values = (keys[1], keys[1] + n_key)
    return keys, values, (values[1], vocab_size)


class CopyDataset(Dataset):
    """Copy task: ``a_1 .. a_L SEP a_1 .. a_L PAD ..``; only the copy after the separator is scored.

    Items are ``(input_ids, targets)`` of length ``seq_len``; ``targets`` is -100 except where the next
    token is a copied one (``copy_len`` positions). Ids: 0 = PAD, 1 = SEP, data tokens ``2 .. vocab_size-1``.
    ``copy_len`` defaults to ``seq_len // 2`` (the longest that fits).
    """

    PAD = 0
    SEP = 1

    def __init__(
        self,
        num_examples: int = 10000,
        seq_len: int = 256,
        vocab_size: int = 32,
        copy_len: int | None = None,
        seed: int = 0,
        split: str | int = "train",
    ) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (PAD, SEP and one data token), got {vocab_size}")
        copy_len = seq_len // 2 if copy_len is None else int(copy_len)
        if not 1 <= copy_len <= seq_len // 2:
            raise ValueError(f"copy_len must be in [1, seq_len // 2 = {seq_len // 2}], got {copy_len}")
        self.num_examples, self.seq_len, self.vocab_size = int(num_examples), int(seq_len), int(vocab_size)
        self.copy_len, self.seed, self.split = copy_len, int(seed), _split_id(split)

    def __len__(self) -> int:
        return self.num_examples

    def sequence(self, idx: int) -> np.ndarray:
        """The full ``seq_len + 1`` token sequence of example ``idx``."""
        rng = np.random.default_rng([self.seed, self.split, idx])
        L = self.copy_len
        payload = rng.integers(2, self.vocab_size, size=L)
        seq = np.full(self.seq_len + 1, self.PAD, dtype=np.int64)
        seq[:L] = payload
        seq[L] = self.SEP
        seq[L + 1 : 2 * L + 1] = payload
        return seq

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= idx < self.num_examples:
            raise IndexError(f"index {idx} out of range for CopyDataset of length {self.num_examples}")
        seq = torch.from_numpy(self.sequence(idx))
        x, y = seq[:-1], seq[1:].clone()
        L = self.copy_len
        mask = torch.ones_like(y, dtype=torch.bool)
        mask[L : 2 * L] = False  # y[j] = seq[j + 1]: the copy occupies seq[L+1 .. 2L]
        y[mask] = IGNORE_INDEX
        return x, y


CONTROL = -1
NEEDLE_ASK = ("needle", "uniform")
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


MQAR_LAYOUTS = ("zoology", "marked")


class AssociativeRecallDataset(Dataset):
    """Multi-query associative recall (MQAR): many key-value pairs, then several queries, one per key asked.

    ``layout="zoology"`` (the default; Arora et al. 2023, *Zoology*): the sequence opens with the
    ``num_pairs`` records as adjacent pairs ``k_1..k_kl v_1..v_vl`` (no markers, no filler between
    them); the rest of the sequence is filler holding ``num_queries`` queries (default: ``num_pairs``, every
    key queried once, in random order) at random positions. A query is the bare key ``k_1..k_kl``: the
    position of its last key token is scored on ``v_1`` (then the next ``value_len - 1`` positions on
    ``v_2..``), and the input there is filler, so **no answer ever appears in the input after the records**:
    a query cannot rule out values revealed by earlier queries, and a model that does not retrieve stays
    at chance (``1 / num_pairs`` among the in-context values) on every query, the first and the last alike.

    ``layout="marked"`` (halo_lab's first layout, kept for comparison): records ``KEY k VAL v`` spread at
    random over everything before the queries, with filler in between; ``num_queries`` queries ``QUERY k VAL
    v`` packed at the end, each followed by its answer **in the input**. Later queries can then exclude the
    values already revealed (a model that never retrieves scores above chance, and more so on later queries),
    so compare its accuracy with the first query's.

    Keys are distinct within an example and so are values (as token sequences), so a key occurs exactly
    once among the records and another record's value is always a wrong answer. Filler tokens come from a
    range disjoint from keys and values (``filler=False`` pads with PAD instead). Only the answers' value
    tokens are scored: ``targets`` is -100 elsewhere, and the scored positions come in query order,
    ``value_len`` per query. Query ``j``'s distance is query start - start of its record. Every example
    draws fresh keys, values, filler, positions and query order from ``(seed, split, index)``.

    Items are ``(input_ids, targets, distance)`` where ``distance`` is a ``[num_queries]`` long tensor, one
    per query in sequence order. It holds the distance *bucket* of each query (the largest edge of
    ``distance_buckets`` that is <= the exact distance), so accuracy by distance stays a small table:
    ``acc@64`` with edges ``[.., 64, 128, ..]`` is the accuracy of queries at distances 64..127. The exact
    distances are in :meth:`example`. ``distance_buckets`` defaults to powers of two, from the largest one
    <= the record length (the shortest possible distance) up to the longest possible distance.

    Vocabulary (``vocab_size``, default 128): 0 PAD, 1 KEY, 2 VAL, 3 QUERY (the markers are used by the
    marked layout only), then a quarter of the rest for key tokens, a quarter for value tokens and the
    remainder for filler (the needle task's layout).
    """

    PAD, KEY, VAL, QUERY = 0, 1, 2, 3
    RESERVED = 4

    def __init__(
        self,
        num_examples: int = 10000,
        seq_len: int = 512,
        vocab_size: int = 128,
        num_pairs: int = 16,
        num_queries: int | None = None,
        key_len: int = 1,
        value_len: int = 1,
        distance_buckets: Sequence[int] | None = None,
        filler: bool = True,
        seed: int = 0,
        split: str | int = "train",
        layout: str = "zoology",
    ) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if num_pairs < 2:
            raise ValueError(f"num_pairs must be >= 2 (a query among several records), got {num_pairs}")
        if layout not in MQAR_LAYOUTS:
            raise ValueError(f"layout must be one of {MQAR_LAYOUTS}, got {layout!r}")
        if num_queries is None:  # zoology: every key queried once
            num_queries = num_pairs if layout == "zoology" else max(1, num_pairs // 2)
        if not 1 <= num_queries <= num_pairs:
            raise ValueError(
                f"num_queries must be in [1, num_pairs = {num_pairs}] (each query asks a different key), "
                f"got {num_queries}"
            )
        if key_len < 1:
            raise ValueError(f"key_len must be >= 1, got {key_len}")
        if value_len < 1:
            raise ValueError(f"value_len must be >= 1, got {value_len}")
        self.key_range, self.value_range, self.filler_range = _token_ranges(vocab_size, "mqar")
        n_key = n_val = self.key_range[1] - self.key_range[0]
        if n_key**key_len < num_pairs:
            raise ValueError(
                f"vocab_size {vocab_size} gives {n_key} key tokens: with key_len {key_len} that is "
                f"{n_key**key_len} distinct keys, fewer than num_pairs = {num_pairs}: raise vocab_size or "
                "key_len, or lower num_pairs"
            )
        if n_val**value_len < num_pairs:
            raise ValueError(
                f"vocab_size {vocab_size} gives {n_val} value tokens: with value_len {value_len} that is "
                f"{n_val**value_len} distinct values, fewer than num_pairs = {num_pairs}: raise vocab_size "
                "or value_len, or lower num_pairs"
            )
        self.num_examples, self.seq_len, self.vocab_size = int(num_examples), int(seq_len), int(vocab_size)
        self.num_pairs, self.num_queries = int(num_pairs), int(num_queries)
        self.key_len, self.value_len = int(key_len), int(value_len)
        self.filler, self.seed, self.split = bool(filler), int(seed), _split_id(split)
        self.layout = layout
        # A query (with its scored slots) is as long as a record.
        self.pair_len = self.key_len + self.value_len + (2 if layout == "marked" else 0)
        need = (self.num_pairs + self.num_queries) * self.pair_len
        if layout == "marked":
            # Records live in [0, query_start); the queries fill the sequence's tail.
            self.query_start = self.seq_len + 1 - self.num_queries * self.pair_len
            short = self.query_start < self.num_pairs * self.pair_len
            need -= 1
            self.max_distance = self.seq_len + 1 - self.pair_len  # first record, last query
        else:
            # Records packed at the start; queries anywhere in [query_start, seq_len).
            self.query_start = self.num_pairs * self.pair_len
            short = self.seq_len < need
            self.max_distance = self.seq_len - self.pair_len
        if short:
            raise ValueError(
                f"seq_len {seq_len} is too short for {num_pairs} records and {num_queries} queries of "
                f"{self.pair_len} tokens each: needs seq_len >= {need}"
            )
        self.min_distance = self.pair_len  # the last record right before the first query
        if distance_buckets is None:
            edge = 1 << (self.min_distance.bit_length() - 1)
            edges = []
            while edge <= self.max_distance:
                edges.append(edge)
                edge *= 2
        else:
            edges = [
                int(e)
                for e in ([distance_buckets] if isinstance(distance_buckets, int) else distance_buckets)
            ]
            if not edges:
                raise ValueError("distance_buckets must not be empty (or null for powers of two)")
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"distance_buckets must be strictly increasing, got {edges}")
            if not 1 <= edges[0] <= self.min_distance:
                raise ValueError(
                    f"distance_buckets must start at an edge in [1, {self.min_distance}] (the shortest "
                    f"possible distance, one record length), got {edges[0]}"
                )
        self.distance_buckets = edges

    def __len__(self) -> int:
        return self.num_examples

    def bucket(self, distance: int | np.ndarray) -> np.ndarray:
        """The bucket (largest ``distance_buckets`` edge <= distance) of each distance."""
        edges = np.asarray(self.distance_buckets)
        return edges[np.searchsorted(edges, np.asarray(distance), side="right") - 1]

    def _distinct(self, rng: np.random.Generator, lo_hi: tuple[int, int], length: int) -> np.ndarray:
        """``num_pairs`` distinct token sequences of ``length`` tokens from ``range(*lo_hi)``."""
        n = lo_hi[1] - lo_hi[0]
        if n**length <= 4 * self.num_pairs:  # a crowded space: draw distinct codes, then their digits
            codes = rng.choice(n**length, size=self.num_pairs, replace=False)
            digits = np.stack([(codes // n**i) % n for i in reversed(range(length))], axis=1)
            return lo_hi[0] + digits
        seen: set[tuple[int, ...]] = set()
        out: list[tuple[int, ...]] = []
        while len(out) < self.num_pairs:
            t = tuple(int(v) for v in rng.integers(*lo_hi, size=length))
            if t not in seen:
                seen.add(t)
                out.append(t)
        return np.array(out, dtype=np.int64)

    def example(self, idx: int) -> dict[str, Any]:
        """The example and its parts: ``input`` and ``targets`` (``seq_len`` each, what the item holds),
        ``keys`` [num_pairs, key_len] and ``values`` [num_pairs, value_len] (record ``i`` holds ``keys[i]``
        -> ``values[i]``), ``records`` (start of record ``i``), ``asked`` (the record each query asks, in
        sequence order), ``queries`` (query starts), ``scored`` (the first scored target position of each
        query) and ``distances`` (exact). The marked layout also gives ``seq`` (seq_len + 1 tokens: input
        = seq[:-1], targets from seq[1:]) and ``answers`` (first answer token of each query in ``seq``)."""
        if not 0 <= idx < self.num_examples:
            raise IndexError(
                f"index {idx} out of range for AssociativeRecallDataset of length {self.num_examples}"
            )
        rng = np.random.default_rng([self.seed, self.split, idx])
        pl, kl, n, q = self.pair_len, self.key_len, self.num_pairs, self.num_queries
        if self.filler:
            seq = rng.integers(*self.filler_range, size=self.seq_len + 1)
        else:
            seq = np.full(self.seq_len + 1, self.PAD, dtype=np.int64)
        keys = self._distinct(rng, self.key_range, kl)
        values = self._distinct(rng, self.value_range, self.value_len)
        if self.layout == "zoology":
            return self._zoology(rng, seq[: self.seq_len], keys, values)
        # Records at sorted random offsets within [0, query_start): non-overlapping, filler in the gaps.
        offs = np.sort(rng.integers(0, self.query_start - n * pl + 1, size=n))
        records = offs + pl * np.arange(n)
        asked = rng.choice(n, size=q, replace=False)
        queries = self.query_start + pl * np.arange(q)

        def put(at: int, marker: int, key: np.ndarray, value: np.ndarray) -> None:
            seq[at] = marker
            seq[at + 1 : at + 1 + kl] = key
            seq[at + 1 + kl] = self.VAL
            seq[at + 2 + kl : at + pl] = value

        for at, key, value in zip(records, keys, values):
            put(int(at), self.KEY, key, value)
        for at, i in zip(queries, asked):
            put(int(at), self.QUERY, keys[i], values[i])
        seq = seq.astype(np.int64)
        answers = queries + 2 + kl
        targets = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        for a in answers.tolist():
            targets[a - 1 : a - 1 + self.value_len] = seq[a : a + self.value_len]  # y[j] predicts seq[j+1]
        return {
            "seq": seq,
            "input": seq[:-1],
            "targets": targets,
            "keys": keys,
            "values": values,
            "records": records,
            "asked": asked,
            "queries": queries,
            "answers": answers,
            "scored": answers - 1,
            "distances": queries - records[asked],
        }

    def _zoology(self, rng, x: np.ndarray, keys: np.ndarray, values: np.ndarray) -> dict[str, Any]:
        pl, kl, vl, n, q = self.pair_len, self.key_len, self.value_len, self.num_pairs, self.num_queries
        records = pl * np.arange(n)
        for at, key, value in zip(records, keys, values):
            x[at : at + kl] = key
            x[at + kl : at + pl] = value
        asked = rng.choice(n, size=q, replace=False)
        # Query slots of pl positions (key, then vl - 1 more scored positions of filler) at sorted random
        # offsets in [query_start, seq_len): non-overlapping, filler between them.
        offs = np.sort(rng.integers(0, self.seq_len - self.query_start - q * pl + 1, size=q))
        queries = self.query_start + offs + pl * np.arange(q)
        targets = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        for at, i in zip(queries.tolist(), asked):
            x[at : at + kl] = keys[i]
            targets[at + kl - 1 : at + kl - 1 + vl] = values[i]  # the last key token predicts v_1
        return {
            "input": x.astype(np.int64),
            "targets": targets,
            "keys": keys,
            "values": values,
            "records": records,
            "asked": asked,
            "queries": queries,
            "scored": queries + kl - 1,
            "distances": queries - records[asked],
        }

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ex = self.example(idx)
        x, y = torch.from_numpy(ex["input"].copy()), torch.from_numpy(ex["targets"])
        return x, y, torch.from_numpy(self.bucket(ex["distances"]).astype(np.int64))


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
