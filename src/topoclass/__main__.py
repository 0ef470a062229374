"""``python -m topoclass``: the command line (also what ``torchrun -m topoclass`` runs)."""

import sys

from topoclass.cli import main

sys.exit(main())
