"""``python -m halo_lab.bench.replot RESULTS.json [OUT.png]``: redraw the plot of a saved bench result
(``halo_lab.bench.plots.main``; its own module, so ``-m`` runs it without a second import of
``halo_lab.bench.plots``, which the package imports)."""

import sys

from halo_lab.bench.plots import main

if __name__ == "__main__":
    sys.exit(main())
