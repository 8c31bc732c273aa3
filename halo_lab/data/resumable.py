"""A map-style train DataLoader whose position in the epoch survives a checkpoint.

Hand-written on purpose: torchdata's ``StatefulDataLoader`` (0.11) was tried in its place and fails
``tests/test_runner.py::test_resume_continues_the_data_position``: its state lives on the iterator,
which Lightning tears down at the end of ``fit`` (the final ``last.ckpt`` then resumes at the epoch's
start), and after a resume the following epoch draws another order than an uninterrupted run.
"""

from __future__ import annotations

from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch survives a checkpoint.

    Lightning saves ``state_dict()`` of stateful train loaders in every checkpoint and calls
    ``load_state_dict()`` on resume. The state is the number of batches yielded in the current epoch
    and the shuffling generator's state at the start of that epoch: the resumed epoch draws the same
    order and skips what was already trained on. (Skipping re-reads those samples; memory-mapped
    windows make that cheap.) Under DDP Lightning swaps in a DistributedSampler, whose order is a
    function of (seed, epoch): the skip alone is then exact.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0
        self._epoch_gen_state = None
        self._restore_gen_state = None

    def _generator(self):
        return getattr(self.sampler, "generator", None)

    def __iter__(self):
        gen = self._generator()
        if gen is not None:
            if self._restore_gen_state is not None:
                gen.set_state(self._restore_gen_state)
            self._epoch_gen_state = gen.get_state().clone()
        self._restore_gen_state = None
        skip, self._skip = self._skip, 0
        try:
            if skip >= len(self):  # the checkpoint closed an epoch: the next one starts fresh
                skip = 0
        except TypeError:
            pass
        self._yielded = 0
        it = super().__iter__()
        for _ in range(skip):
            next(it)
            self._yielded += 1
        for batch in it:
            self._yielded += 1
            yield batch

    def state_dict(self):
        state = {"batches_in_epoch": int(self._yielded)}
        if self._epoch_gen_state is not None:
            state["generator_state"] = self._epoch_gen_state
        return state

    def load_state_dict(self, state):
        self._skip = int(state.get("batches_in_epoch", 0))
        self._restore_gen_state = state.get("generator_state")
