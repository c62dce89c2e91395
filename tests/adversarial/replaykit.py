"""The one site that test_replay_ssh replays every attack on: ssh transport, Slurm backend.

The site lives in a directory other users may traverse (0711), so that an attack by
another local user (``nobody``) meets the spool's own modes, not a private temp dir.
The submitter connects with a passphrase-protected key whose passphrase is in its
environment, and the sshd gives login sessions a secret variable of its own: neither may
reach a job.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.dropbox.submitter import PassReport, Submitter
from hpc_worker.states import PilotState
from tests.adversarial.secrets import SECRET
from tests.services._proc import run
from tests.services.cluster import SlurmCluster, SshServer
from tests.sitekit import PROJECT, TEST_TEMPLATES, Site

PASSPHRASE_VAR = "HPC_REPLAY_KEY_PASSPHRASE"
PASSPHRASE = SECRET + "-passphrase"
SITE_TOKEN = SECRET + "-login-token"

# Templates with a placeholder where a plain word is not what bash reads: refused at load.
HOSTILE_TEMPLATES = {
    "ctx_double_quotes": '#!/bin/bash\necho "<<value>>" > <<output>>\n',
    "ctx_heredoc": "#!/bin/bash\ncat > <<output>> <<EOF\n<<value>>\nEOF\n",
    "ctx_backticks": "#!/bin/bash\necho `echo <<value>>` > <<output>>\n",
    "ctx_arith": "#!/bin/bash\necho $(( <<value>> )) > <<output>>\n",
    "input_mode": "#!/bin/bash\n# Writes the mode of its input as the job sees it.\n"
                  "stat -L -c %a <<input>> > <<output>>\n",
    "fifo_out": "#!/bin/bash\n# Hostile job: its output is a FIFO (a read of it would block).\n"
                "mkfifo <<output>>\n",
    "dir_out": "#!/bin/bash\n# Hostile job: its output is a directory.\nmkdir <<output>>\n",
    "fifo_stdout": (
        "#!/bin/bash\n# Hostile job: replaces its published stdout.txt with a FIFO.\n"
        "for dir in . ..; do\n"
        "    if [ -e $dir/stdout.txt ]; then rm -f $dir/stdout.txt; mkfifo $dir/stdout.txt; fi\n"
        "done\necho fine > <<output>>\n"),
    "link_stderr": (
        "#!/bin/bash\n# Hostile job: replaces its published stderr.txt with a link to <<target>>.\n"
        "for dir in . ..; do\n"
        "    if [ -e $dir/stderr.txt ]; then\n"
        "        rm -f $dir/stderr.txt; ln -s <<target>> $dir/stderr.txt\n"
        "    fi\n"
        "done\necho fine > <<output>>\n"),
    "env_dump": "#!/bin/bash\n# Writes the job's whole environment.\nenv > <<output>>\n",
    "grow_runs_65mb": (
        "#!/bin/bash\n# Hostile job: grows its own journal (job.json) by about 85 MB with\n"
        "# forged start lines, then ends well.\n"
        "line='{\"pilot\": \"forged\", \"rec\": \"run\", \"start\": \"2020-01-01T00:00:00\"}'\n"
        "for dir in . ..; do\n"
        "    if [ -e $dir/job.json ]; then\n"
        "        yes -- $line | head -n 1300000 >> $dir/job.json\n"
        "    fi\n"
        "done\necho fine > <<output>>\n"),
}


class PassphraseSshServer(SshServer):
    """The test sshd, also accepting a key locked with :data:`PASSPHRASE`."""

    @property
    def locked_key_path(self) -> Path:
        return self.base_dir / "locked_ed25519"

    def _prepare(self) -> None:
        super()._prepare()  # writes authorized_keys afresh on every start
        if not self.locked_key_path.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-C", "locked",
                 "-f", str(self.locked_key_path)])
        with (self.base_dir / "authorized_keys").open("a") as handle:
            handle.write(self.locked_key_path.with_suffix(".pub").read_text())


def _templates(into: Path) -> Path:
    into.mkdir()
    for path in TEST_TEMPLATES.glob("*.sh"):
        shutil.copy(path, into / path.name)
    shutil.copy(PROJECT / "examples" / "demo" / "templates" / "shout.sh", into / "shout.sh")
    for name, text in HOSTILE_TEMPLATES.items():
        (into / (name + ".sh")).write_text(text)
    return into


class ReplaySite(Site):
    """A :class:`Site` on Slurm behind ``server``, with one long-lived submitter ``sub``."""

    def __init__(self, root: Path, server: PassphraseSshServer, **sections: Any) -> None:
        super().__init__(root, **sections)
        self.server = server
        self.sub: Submitter = self.submitter()

    @classmethod
    @contextlib.contextmanager
    def started(cls, factory: pytest.TempPathFactory,
                cluster: SlurmCluster) -> Iterator[ReplaySite]:
        root = Path(tempfile.mkdtemp(prefix="hpc-replay-"))
        root.chmod(0o711)
        env = dict(cluster.env, HPC_REPLAY_SITE_TOKEN=SITE_TOKEN)
        with PassphraseSshServer(factory.mktemp("sshd-replay"), env=env) as server, \
                pytest.MonkeyPatch.context() as patch:
            patch.setenv(PASSPHRASE_VAR, PASSPHRASE)
            site = cls(root, server, **cls.sections(server, _templates(root / "templates")))
            try:
                yield site
            finally:
                site.close()
                shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def sections(server: PassphraseSshServer, templates: Path) -> dict[str, dict[str, str]]:
        return {
            "transport": {"type": "ssh", "host": server.host, "port": str(server.port),
                          "user": server.user, "key_file": str(server.locked_key_path),
                          "passphrase_env": PASSPHRASE_VAR,
                          "known_hosts": str(server.known_hosts_path), "timeout": "5"},
            "scheduler": {"backend": "slurm", "partition": "debug", "failure_backoff": "1",
                          "command_timeout": "20"},
            "pilot": {"python": sys.executable, "idle_timeout": "6"},
            "templates": {"path": str(templates)},
        }

    def close(self) -> None:
        for pilot in self.spool.pilots():
            if pilot.scheduler_id and pilot.state is not PilotState.GONE:
                with contextlib.suppress(Exception):
                    self.sub.backend.cancel(pilot.scheduler_id)
        super().close()


def run_pass_guarded(sub: Submitter, timeout: float = 60.0) -> PassReport:
    """One pass in a thread: a pass that blocks (a FIFO read) fails the test, not hangs it."""
    out: list[PassReport] = []
    thread = threading.Thread(target=lambda: out.append(sub.run_pass()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the pass blocked"
    assert out, "the pass raised"
    return out[0]
