"""``python -m mofasa.cli`` (also what ``torchrun -m mofasa.cli`` runs)."""

import sys

from mofasa.cli import main

sys.exit(main())
