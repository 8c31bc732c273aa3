"""The experiment runner: everything between a composed Hydra config and a finished run directory.

- :mod:`~halo_lab.runner.config`: conf/ location, composing without running, structured validation.
- :mod:`~halo_lab.runner.build`: config nodes -> datamodule, LightningModule, callbacks, loggers, trainer.
- :mod:`~halo_lab.runner.module`: ``HaloLitModule`` (loss, metrics, optimizer, schedule).
- :mod:`~halo_lab.runner.callbacks`: throughput, samples, progress lines, metrics history, atomic
  checkpoint I/O.
- :mod:`~halo_lab.runner.summary`: metrics.json, the hub export, the final sample.
- :mod:`~halo_lab.runner.resume`, :mod:`~halo_lab.runner.wandb_run`, :mod:`~halo_lab.runner.ddp`:
  ``ckpt_path``, the W&B run id, the DDP relaunch under Hydra.

The entry point is ``halo_lab/train.py`` (``python -m halo_lab.train``).
"""
