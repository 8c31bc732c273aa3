"""``python -m halo_lab.report SWEEP_DIR``."""

import sys

from halo_lab.report.cli import main

sys.exit(main())
