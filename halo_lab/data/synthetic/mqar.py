"""Multi-query associative recall (MQAR): the zoology layout and halo_lab's earlier marked one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from halo_lab.data.synthetic.common import IGNORE_INDEX, _split_id, _token_ranges

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
