"""Build hook: ship the templates, the demo, the tool wrappers and the example configs
inside the package, mapped from where they live in the checkout (nothing is moved).

The wheel holds them under ``galaxy_hpc_runner/shipped/<path in the checkout>``;
:func:`galaxy_hpc_runner.config.shipped` finds them there (or, in a checkout or an
editable install, in the checkout itself). Everything else is in setup.cfg.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Paths relative to the checkout; the same names inside galaxy_hpc_runner/shipped/.
SHIPPED = ("templates", "examples/demo/templates", "examples/hpc-batch.ini", "examples/ops",
           "tool_wrappers", "job_conf.example.yml")


class BuildPyWithShipped(build_py):
    """build_py, then copy the shipped data next to the code in build_lib."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        target = Path(self.build_lib) / "galaxy_hpc_runner" / "shipped"
        for rel in SHIPPED:
            source, dest = HERE / rel, target / rel
            if not source.exists():
                raise FileNotFoundError("shipped data %s is missing from the source tree" % source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dest, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, dest)


setup(cmdclass={"build_py": BuildPyWithShipped})
