"""The copy task: ``a_1 .. a_L SEP a_1 .. a_L PAD ..``, only the copy scored."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from halo_lab.data.synthetic.common import IGNORE_INDEX, _split_id


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
