"""A map-style train DataLoader whose position survives a checkpoint, at every point of every epoch.

Hand-written on purpose: torchdata's ``StatefulDataLoader`` (0.11) was tried in its place and fails
``tests/test_runner.py::test_resume_continues_the_data_position``: its state lives on the iterator,
which Lightning tears down at the end of ``fit`` (the final ``last.ckpt`` then resumes at the epoch's
start), and after a resume the following epoch draws another order than an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

STATE_FORMAT = 2
_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads (seed, epoch) over the seed space


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of ``epoch`` >= 1 (epoch 0 keeps the generator exactly as it was given)."""
    return (int(seed) + int(epoch) * _MIX) % (1 << 63)


@dataclass
class LoaderPosition:
    """Where a :class:`ResumableDataLoader` stands: the epoch and the batches of it handed out.

    Its own object so that the copy Lightning makes of the loader (under DDP it rebuilds the loader with a
    DistributedSampler, from the constructor's arguments) shares the position with the original, and the
    datamodule can save and restore it whether or not Lightning restores the loader itself (it does not
    when a checkpoint was written after a finished epoch of an epoch-based run).
    """

    epoch: int = 0
    batches: int = 0
    legacy_gen_state: torch.Tensor | None = None


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position survives a checkpoint: the state is (epoch, batches handed out in it).

    The shuffle order of an epoch is a pure function of the generator the loader was built with and the
    epoch number: epoch 0 uses the generator as given, epoch ``e`` >= 1 reseeds it with
    :func:`epoch_seed`. The order therefore never depends on how many iterators the trainer created,
    dropped or exhausted, nor on when ``state_dict()`` is called. A new iterator continues the current
    epoch where it stands (skipping the batches already handed out; memory-mapped windows make that
    cheap) and starts the next epoch only once every batch of this one was handed out. ``state_dict()``
    of a finished epoch already names the next one, so a checkpoint written right after an epoch's last
    batch resumes with the next epoch's first batch, and a loader that never iterated (a resume with
    nothing left to train) saves the position it was given. Under DDP Lightning swaps in a
    DistributedSampler, whose order is a function of (seed, epoch): the loader sets that epoch itself.

    Lightning saves ``state_dict()`` of stateful train loaders in every checkpoint and calls
    ``load_state_dict()`` on resume. States written before this format (``batches_in_epoch`` and a
    ``generator_state``, no ``epoch``) still load: the epoch they were in continues from its saved order.
    """

    def __init__(self, *args: Any, position: LoaderPosition | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position if position is not None else LoaderPosition()
        gen = self._generator()
        self._epoch0_state = gen.get_state().clone() if gen is not None else None
        self._seed = gen.initial_seed() if gen is not None else 0

    # ------------------------------------------------------------------ helpers
    def _generator(self) -> torch.Generator | None:
        if self.generator is not None:
            return self.generator
        return getattr(self.sampler, "generator", None)

    def _num_batches(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    def _prepare_epoch(self, epoch: int) -> None:
        gen = self._generator()
        if gen is not None:
            if self.position.legacy_gen_state is not None:
                gen.set_state(self.position.legacy_gen_state)
            elif epoch == 0:
                gen.set_state(self._epoch0_state)
            else:
                gen.manual_seed(epoch_seed(self._seed, epoch))
        self.position.legacy_gen_state = None
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):  # DistributedSampler under DDP
                sampler.set_epoch(epoch)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        pos = self.position
        n = self._num_batches()
        if n is not None and pos.batches >= n:  # every batch of this epoch was handed out: the next one
            pos.epoch, pos.batches = pos.epoch + 1, 0
        epoch, skip = pos.epoch, pos.batches
        self._prepare_epoch(epoch)
        it = super().__iter__()
        for _ in range(skip):
            next(it)
        for batch in it:
            pos.batches += 1
            yield batch
        if n is None and pos.epoch == epoch:  # no length: exhausting the iterator ends the epoch
            pos.epoch, pos.batches = epoch + 1, 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self.position.epoch, self.position.batches
        n = self._num_batches()
        if n is not None and batches >= n:
            epoch, batches = epoch + 1, 0
        return {"format": STATE_FORMAT, "epoch": int(epoch), "batches_in_epoch": int(batches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pos = self.position
        batches = int(state.get("batches_in_epoch", 0))
        if "epoch" in state:
            pos.epoch, pos.batches, pos.legacy_gen_state = int(state["epoch"]), batches, None
            return
        # Before format 2: the generator state at the start of the saved epoch, whose number is unknown.
        n = self._num_batches()
        if n is not None and batches >= n:  # it had just ended (its saved order is of no use now)
            pos.epoch, pos.batches, pos.legacy_gen_state = 1, 0, None
        else:
            pos.epoch, pos.batches, pos.legacy_gen_state = 0, batches, state.get("generator_state")
