"""The experiment runner: everything between a composed Hydra config and a finished run directory.

- :mod:`~halo_lab.runner.config`: conf/ location, composing without running, structured validation.
- :mod:`~halo_lab.runner.options`: the ``model=`` and ``device=`` options registered from their tables.
- :mod:`~halo_lab.runner.build`: config nodes -> datamodule, LightningModule, callbacks (all of the
  run's, in one list), loggers, trainer.
- :mod:`~halo_lab.runner.module`: ``HaloLitModule`` (loss, metrics, optimizer, schedule).
- :mod:`~halo_lab.runner.checkpointing`: atomic, checksummed checkpoint I/O, last.ckpt at the last step,
  ``save_top_k`` across kills, a killed run's temp files.
- :mod:`~halo_lab.runner.progress`: throughput and peak memory, progress lines, the metrics history.
- :mod:`~halo_lab.runner.samples`: sample generations during training and at the end.
- :mod:`~halo_lab.runner.resume`: what ``ckpt_path`` means, the checkpoint checked, the ``ResumePlan``.
- :mod:`~halo_lab.runner.summary`: after fit, in one call: metrics.json, the hub export, the final sample.
- :mod:`~halo_lab.runner.wandb_run`, :mod:`~halo_lab.runner.ddp`: the W&B run id, the DDP relaunch
  under Hydra.

The entry point is ``halo_lab/train.py`` (``python -m halo_lab.train``).
"""
