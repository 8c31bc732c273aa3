"""What the synthetic tasks share: the loss's ignore index, split ids, and the retrieval tasks' vocabulary."""

from __future__ import annotations

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
