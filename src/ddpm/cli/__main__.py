"""`python -m ddpm.cli …` runs the `ddpm` command (what `torchrun -m ddpm.cli train …` needs)."""

import sys

from . import main

sys.exit(main())
