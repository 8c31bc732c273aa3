"""Callbacks the reliability probe adds to the runs it kills (``+callbacks.NAME._target_=hooks.X``).

- :class:`BatchRecorder`: every training batch (step, epoch, index, hash) as a JSON line, so the probe can
  compare the data of an interrupted and resumed run with an uninterrupted one.
- :class:`Pause`: writes a marker file and sleeps at a chosen point (a training step, inside a checkpoint
  write, inside validation, inside the hub export), so the probe's SIGKILL lands exactly there.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import lightning.pytorch as pl


class BatchRecorder(pl.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        h = hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        rec = {"step": trainer.global_step, "epoch": trainer.current_epoch, "idx": batch_idx, "h": h}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


class Pause(pl.Callback):
    """``kind``: ``step`` (before training step ``step``), ``ckpt`` (halfway through writing the first
    checkpoint at or after ``step``), ``val`` (inside the first validation during fit at or after
    ``step``), ``final_val`` (inside the runner's validation after fit), ``export`` (inside the hub
    export after training)."""

    def __init__(self, kind: str, step: int, marker: str, seconds: float = 60.0):
        self.kind, self.step, self.marker, self.seconds = kind, int(step), marker, float(seconds)
        self._armed = False
        if kind == "ckpt":
            self._patch_torch_save()
        if kind == "export":
            self._patch_export()

    def _pause(self) -> None:
        Path(self.marker).write_text(str(time.time()))
        time.sleep(self.seconds)

    def _patch_torch_save(self) -> None:
        import torch

        real, me = torch.save, self

        def save(obj, f, *args, **kwargs):
            if not me._armed or isinstance(f, str | Path):
                return real(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])  # half a checkpoint in the temp file, then the kill
            f.flush()
            me._pause()
            f.write(data[len(data) // 2 :])
            return None

        torch.save = save

    def _patch_export(self) -> None:
        import halo_lab.hub as hub

        real, me = hub.save_for_hub, self

        def save_for_hub(*args, **kwargs):
            out = real(*args, **kwargs)
            me._pause()
            return out

        hub.save_for_hub = save_for_hub

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            if self.kind == "step":
                self._pause()
            self._armed = self.kind == "ckpt"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.kind == "ckpt" and trainer.global_step >= self.step:
            self._armed = True

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or trainer.global_step < self.step:
            return
        final = trainer.state.fn.value == "validate"  # the runner's validation after fit
        if (self.kind == "val" and not final) or (self.kind == "final_val" and final):
            self._pause()
