"""The run's console: Lightning's own messages once, under Hydra's root handler, without its tips."""

from __future__ import annotations

import logging


def quiet_lightning_console() -> None:
    """The ``lightning`` package adds its own console handler; under Hydra's root handler every Lightning
    message would print twice."""
    import warnings

    import lightning

    # Lightning's own use of a torch API that torch >= 2.10 deprecates (lightning/pytorch/utilities/
    # _pytree.py): nothing halo_lab can change, printed once per run.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's advertisement for its hosted logger, printed by every Trainer without one.
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_tips not in tips.filters:
        tips.addFilter(_drop_tips)
    console = getattr(lightning, "_console", None)
    if console is not None and logging.getLogger().hasHandlers():
        logging.getLogger("lightning").removeHandler(console)


def _drop_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")
