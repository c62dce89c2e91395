"""``python -m galaxy_hpc_runner.cli``: the same as ``hpc-batch``."""

import sys

from galaxy_hpc_runner.cli.main import main

sys.exit(main())
