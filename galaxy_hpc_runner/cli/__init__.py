"""``hpc-batch``: the admin and cron commands (``main``), the admin views and the demo."""

from galaxy_hpc_runner.cli.main import main

__all__ = ["main"]
