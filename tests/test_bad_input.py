"""Every bad description gets an error result in the same pass, and nothing runs."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.sitekit import Site


def _cases(site: Site) -> dict[str, tuple[Any, str]]:
    media = str(site.media("in.txt"))
    out = str(site.out("o.txt"))
    good = {"script": "upper", "input_map": {"input": media}, "output_map": {"output": out}}

    def variant(**changes: Any) -> dict[str, Any]:
        doc = dict(good)
        doc.update(changes)
        return doc

    outside = site.root / "elsewhere.txt"
    outside.write_text("secret")
    return {
        "unknown_placeholder": (variant(script="unknown_placeholder"), "not_defined_anywhere"),
        "unknown_template": (variant(script="no_such_tool"), "unknown template"),
        "template_path": (variant(script="../templates/upper"), "not a plain template name"),
        "template_abs": (variant(script="/bin/sh"), "not a plain template name"),
        "override_workspace": (variant(args={"workspace": "/"}), "reserved variable <<workspace>>"),
        "override_hpc_env": (variant(args={"ledger": "/tmp/x"}), "reserved variable <<ledger>>"),
        "same_basename": (variant(input_map={"input": media, "other": media}),
                          "share the basename"),
        "input_outside_roots": (variant(input_map={"input": str(outside)}),
                                "outside the allowed input roots"),
        "input_symlink_escape": (variant(input_map={"input": _link(site, outside)}),
                                 "outside the allowed input roots"),
        "output_outside_roots": (variant(output_map={"output": "/tmp/evil.txt"}),
                                 "outside the allowed output roots"),
        "missing_input": (variant(input_map={"input": media + ".gone"}), "does not exist"),
        "relative_input": (variant(input_map={"input": "in.txt"}), "not an absolute path"),
        "non_scalar_arg": (variant(script="echo_arg", args={"value": [1, 2]}), "not a scalar"),
        "walltime_too_long": (variant(walltime="2h"), "exceeds the pilot walltime"),
        "job_key_present": (variant(job={"status": "ok"}), "reserved for the result"),
        "typo_key": (variant(inputs_map={}), "unknown top-level key"),
        "bad_name!": (good, "job name"),
    }


def _link(site: Site, target: os.PathLike[str]) -> str:
    link = site.root / "media" / "innocent.txt"
    link.symlink_to(target)
    return str(link)


def test_every_bad_description_is_answered_in_one_pass_and_nothing_runs(site: Site) -> None:
    cases = _cases(site)
    for name, (doc, _) in cases.items():
        site.drop(name, doc)
    report = site.submitter().run_pass()
    assert report.rejected == len(cases)
    for name, (doc, expected) in cases.items():
        result = site.result(name)
        assert result["job"]["status"] == "error", name
        assert expected in result["job"]["message"], (name, result["job"]["message"])
        assert result["script"] == doc["script"]
    assert report.pilots_submitted == 0
    assert site.spool.pilots() == []
    assert site.ledger_lines() == []
    assert list((site.root / "hpc/workspace/jobs").iterdir()) == []
    assert not (site.root / "results" / "o.txt").exists()


@pytest.mark.parametrize("text", ["script: [unclosed", "- a\n- list\n", "just a string", ""])
def test_unparseable_description_gets_a_result_with_the_job_node_alone(
        site: Site, text: str) -> None:
    site.drop("broken", text=text)
    site.submitter().run_pass()
    result = site.result("broken")
    assert list(result) == ["job"]
    assert result["job"]["status"] == "error"
    assert "Invalid job description" in result["job"]["message"]
    assert site.ledger_lines() == []


def test_a_young_broken_file_is_given_time_to_be_completed(make_site: Any) -> None:
    site = make_site(dropbox={"settle": "60"})
    site.drop("half", text="script: upper\ninput_map: {input: ")
    site.submitter().run_pass()
    assert not site.result_path("half").exists()
    assert site.state("half") == ""
