"""``python -m halo_lab.bench``: the Hydra app (halo_lab.bench.cli)."""

from halo_lab.bench.cli import main

main()
