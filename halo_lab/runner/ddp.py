"""DDP under Hydra: the command Lightning relaunches per rank, and leaving the process clean per job.

Lightning's subprocess launcher re-runs ``sys.argv`` for ranks > 0 with ``hydra.run.dir`` set: inside a
multirun each rank would run the entire sweep, into the wrong directory. Lightning has a hook for the
Hydra case (``_hydra_subprocess_cmd``) but it rebuilds the command from the *sweep's* arguments; we
replace it with one that runs exactly this job. That one function is the only patch of Lightning.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

log = logging.getLogger("halo_lab.train")

_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")

# Variables Lightning's DDP launcher sets in the launching process (plus the seed it exports).
DIST_ENV = (
    "LOCAL_RANK",
    "NODE_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
)


def _passthrough_config_flags(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            out.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                out.append(argv[i + 1])
                next(it, None)
    return out


def _hydra_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ddp_rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for DDP rank ``local_rank`` > 0 of this Hydra job: its own overrides,
    no ``-m``, into this job's output directory, writing no ``.hydra/``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if getattr(__main__, "__spec__", None) is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += _passthrough_config_flags(sys.argv[1:])
    command += list(hc.overrides.task)
    command += [
        f"hydra.run.dir={_hydra_quote(str(hc.runtime.output_dir))}",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def patch_ddp_relaunch() -> bool:
    """Make Lightning's subprocess DDP launcher use :func:`ddp_rank_command` (idempotent)."""
    patched = False
    for mod_name in (
        "lightning.pytorch.strategies.launchers.subprocess_script",
        "lightning.fabric.strategies.launchers.subprocess_script",
    ):
        try:
            mod = __import__(mod_name, fromlist=["_hydra_subprocess_cmd"])
        except ImportError:
            continue
        if hasattr(mod, "_hydra_subprocess_cmd"):
            mod._hydra_subprocess_cmd = ddp_rank_command
            patched = True
    if not patched:
        log.warning("could not patch Lightning's DDP relaunch: trainer=ddp inside a multirun may misbehave")
    return patched


def dist_env() -> dict[str, str | None]:
    """The launcher variables as they are now (for :func:`teardown_distributed`)."""
    return {k: os.environ.get(k) for k in DIST_ENV}


def teardown_distributed(env_before: dict[str, str | None]) -> None:
    """Leave the process as the job found it, so the next job of a multirun starts its own DDP group:
    destroy this job's process group and restore the launcher's variables (with LOCAL_RANK left set,
    Lightning would think the next job's ranks are launched externally and wait for them forever)."""
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is not None and torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    for k, v in env_before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def global_rank() -> int:
    """This process's rank before any process group exists (Lightning / torchrun / SLURM variables)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
