"""Galaxy-script mode, staged placement: the parts that need neither Galaxy nor Pulsar
(the placement param, the description, unpacking what the job sent back)."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox.templates import check_templates
from galaxy_hpc_runner.errors import ConfigError, JobError
from galaxy_hpc_runner.galaxy import galaxy_script as gs
from galaxy_hpc_runner.galaxy import staged


def test_placement_is_shared_unless_staged() -> None:
    assert staged.placement({}) == staged.SHARED
    assert staged.placement({"placement": " Separate "}) == staged.SEPARATE
    with pytest.raises(ConfigError, match=r"placement='nfs': use shared .* or separate"):
        staged.placement({"placement": "nfs"})


def test_templates_are_package_data_and_pass_the_checker() -> None:
    here = Path(gs.__file__).parent
    assert (here / "galaxy_job.sh").read_text() == gs.TEMPLATE_TEXT
    assert (here / "galaxy_job_staged.sh").read_text() == gs.STAGED_TEMPLATE_TEXT
    assert check_templates(here) == []


def _tar(path: Path, members: dict[str, bytes | None], link: str = "") -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)


def _job_dir(tmp_path: Path) -> tuple[Path, Path]:
    workdir, files = tmp_path / "jobs" / "7", tmp_path / "files"
    workdir.mkdir(parents=True)
    files.mkdir()
    (files / "dataset_3.dat").write_text("")  # Galaxy creates outputs empty
    staged.Plan(job_script="galaxy_7.sh", inputs={"gx_in0": str(files / "dataset_1.dat")},
                outputs={"outputs/dataset_3.dat": str(files / "dataset_3.dat"),
                         "outputs/dataset_3_files": str(files / "dataset_3_files")},
                sent=["galaxy_7.sh"]).save(str(workdir))
    (workdir / "galaxy_7.sh").write_text("local script\n")
    return workdir, files


def test_collect_puts_outputs_in_place_and_the_rest_in_the_job_directory(
        tmp_path: Path) -> None:
    workdir, files = _job_dir(tmp_path)
    _tar(workdir / staged.RETURN, {
        "./outputs": None, "./outputs/dataset_3.dat": b"result\n",
        "./outputs/dataset_3_files/page.html": b"<p/>", "./outputs/tool_stdout": b"out\n",
        "./working/primary_1_x_visible_txt": b"found\n", "./galaxy_7.ec": b"0\n",
        "./galaxy_7.sh": b"remote script\n"})
    staged.collect(str(workdir), str(workdir / "galaxy_7.ec"))
    assert (files / "dataset_3.dat").read_text() == "result\n"
    assert (files / "dataset_3_files" / "page.html").read_text() == "<p/>"
    assert (workdir / "outputs" / "tool_stdout").read_text() == "out\n"
    assert (workdir / "working" / "primary_1_x_visible_txt").read_text() == "found\n"
    assert (workdir / "galaxy_7.sh").read_text() == "local script\n"  # Galaxy's own kept
    assert not (workdir / staged.RETURN).exists()


@pytest.mark.parametrize(("members", "link", "words"), [
    ({"../escape": b"x"}, "", "outside the job directory"),
    ({"/abs": b"x"}, "", "outside the job directory"),
    ({}, "./working/link", "neither a file nor a directory"),
])
def test_collect_refuses_an_archive_it_cannot_trust(
        tmp_path: Path, members: dict[str, bytes | None], link: str, words: str) -> None:
    workdir, _ = _job_dir(tmp_path)
    _tar(workdir / staged.RETURN, members, link)
    with pytest.raises(JobError, match=words):
        staged.collect(str(workdir), str(workdir / "galaxy_7.ec"))
    assert not (tmp_path / "jobs" / "escape").exists()
    assert not (workdir / "working" / "link").exists()


def test_collect_never_defaults_the_exit_code(tmp_path: Path) -> None:
    workdir, _ = _job_dir(tmp_path)
    _tar(workdir / staged.RETURN, {"./outputs/tool_stdout": b""})
    with pytest.raises(JobError, match=r"exit code file galaxy_7\.ec did not come back"):
        staged.collect(str(workdir), str(workdir / "galaxy_7.ec"))


def test_a_missing_archive_is_named(tmp_path: Path) -> None:
    workdir, _ = _job_dir(tmp_path)
    with pytest.raises(JobError, match=re.escape(staged.RETURN)):
        staged.collect(str(workdir), str(workdir / "galaxy_7.ec"))


def test_description_from_the_plan(tmp_path: Path) -> None:
    workdir, files = _job_dir(tmp_path)
    doc = staged.description(str(workdir), "1h", {"galaxy_job_id": 7})
    assert doc == {
        "script": gs.STAGED_TEMPLATE, "args": {"job_script": "galaxy_7.sh"},
        "input_map": {"gx_bundle": str(workdir / staged.BUNDLE),
                      "gx_in0": str(files / "dataset_1.dat")},
        "output_map": {"gx_return": str(workdir / staged.RETURN)},
        "walltime": "1h", "meta": {"galaxy_job_id": 7}}


def test_prefix_rewrites_take_whole_paths_longest_first() -> None:
    prefixes = [("/g/jobs/7", "/w/jobs/K/galaxy"), ("/g/jobs/7/x_files", "/w/jobs/K/galaxy/o")]
    text = "cd /g/jobs/7; cat '/g/jobs/7/working/a' /g/jobs/70/b /g/jobs/7.x /g/jobs/7/x_files/c"
    assert staged.rewrite_prefixes(text, prefixes) == (
        "cd /w/jobs/K/galaxy; cat '/w/jobs/K/galaxy/working/a' /g/jobs/70/b /g/jobs/7.x "
        "/w/jobs/K/galaxy/o/c")
