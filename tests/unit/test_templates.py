"""Templates are checked when loaded; descriptions are plain YAML with bounds (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import plainyaml
from galaxy_hpc_runner.dropbox.templates import (
    check_templates,
    load_template,
    render,
    scan,
    shell_value,
    template_errors,
)
from galaxy_hpc_runner.errors import JobError

ROOT = Path(__file__).resolve().parents[2]

ALLOWED = {
    "plain word": "printf '%s' <<v>> > out\n",
    "part of a word": "tool --level=<<v>> /mnt/<<v>>.x\n",
    "assignment": "x=<<v>>\ny=pre<<v>>post tool \"$y\"\n",
    "command substitution": "x=$(printf '%s' <<v>>)\n",
    "test command": "if [ <<v>> = true ]; then echo <<v>>; fi\n",
    "for list": "for f in <<v>> b; do echo \"$f\"; done\n",
    "redirection": "tr a b < <<v>> > <<v>>\n",
    "subshell": "(cd <<v>> && ls)\n",
    "after a pipe": "echo x | tee <<v>>\n",
    "array elements": "x=( <<v>> b\n  <<v>> )\n",
    "after &> redirection": "tool &> log <<v>>\n",
}
REFUSED = {
    "double quotes": ('echo "x <<v>>"\n', "inside double quotes"),
    "single quotes": ("echo '<<v>>'\n", "inside single quotes"),
    "backquotes": ("echo `echo <<v>>`\n", "inside backquotes"),
    "ansi-c quotes": ("echo $'<<v>>'\n", "inside $'...' quotes"),
    "parameter expansion": ("echo ${x:-<<v>>}\n", "inside ${...}"),
    "arithmetic expansion": ("echo $(( <<v>> + 1 ))\n", "inside arithmetic"),
    "arithmetic command": ("(( x = <<v>> ))\n", "inside arithmetic"),
    "here-document": ("cat <<EOF\n<<v>>\nEOF\n", "inside a here-document"),
    "quoted here-document": ("cat <<'EOF'\n<<v>>\nEOF\n", "inside a here-document"),
    "command position": ("<<v>> --flag\n", "in command position"),
    "command after &&": ("true && <<v>>\n", "in command position"),
    "eval": ("eval echo <<v>>\n", "'eval'"),
    "let": ("let x=<<v>>\n", "'let'"),
    "double brackets": ("[[ <<v>> -eq 1 ]]\n", "'[['"),
    "declare": ("declare -a x=<<v>>\n", "'declare'"),
    "double quotes in $()": ('echo "$(echo <<v>>)"\n', "inside double quotes"),
}


@pytest.mark.parametrize("text", ALLOWED.values(), ids=list(ALLOWED))
def test_plain_unquoted_words_are_allowed(text: str) -> None:
    assert template_errors(text) == []
    assert all(occ.problem == "" for occ in scan(text))


@pytest.mark.parametrize("text,why", REFUSED.values(), ids=list(REFUSED))
def test_every_other_context_is_a_template_error_naming_line_and_column(
        text: str, why: str) -> None:
    text = "#!/bin/bash\n" + text
    line = text[:text.index("<<v>>")].count("\n") + 1
    errors = template_errors(text, "t.sh")
    assert len(errors) == 1 and why in errors[0], errors
    assert errors[0].startswith("t.sh:%d:" % line), errors


def test_the_column_is_exact() -> None:
    assert template_errors('a=1\necho x "<<v>>"\n', "f.sh") == [
        "f.sh:2:9: placeholder <<v>> inside double quotes; use it as a plain unquoted word"]


def test_placeholders_in_comments_stay_as_written() -> None:
    text = "# writes <<output>>\necho hi  # and <<x>>\ncat <<input>>\n"
    assert render(text, {"input": "a b"}) == "# writes <<output>>\necho hi  # and <<x>>\n" \
                                             "cat 'a b'\n"


def test_a_bad_template_fails_every_job_that_uses_it_with_file_line_column(
        tmp_path: Path) -> None:
    path = tmp_path / "bad.sh"
    path.write_text('#!/bin/bash\necho "wrote <<output>>"\n')
    with pytest.raises(JobError, match=r"bad\.sh:2:13: placeholder <<output>> inside double"):
        load_template(path)


@pytest.mark.parametrize("directory", ["templates", "examples/demo/templates", "tests/templates"])
def test_shipped_templates_pass_the_check(directory: str) -> None:
    assert check_templates(ROOT / directory) == []


def test_nul_in_a_value_is_an_error_naming_the_placeholder() -> None:
    with pytest.raises(JobError, match=r"<<value>>: the value contains a NUL"):
        shell_value("a\0b", "value")


@pytest.mark.parametrize("text,why", [
    ("when: 2020-01-01\n", "a date or time"),
    ("when: 2020-01-01 10:00:00\n", "a date or time"),
    ("blob: !!binary aGVsbG8=\n", "binary data"),
    ("s: !!set {a, b}\n", "a set"),
    ("o: !!omap [a: 1]\n", "an ordered map"),
    ("x: !!python/name:os.system\n", "tag:yaml.org,2002:python/name:os.system"),
    ("x: !custom 1\n", "the tag !custom"),
])
def test_only_plain_yaml_types_are_read(text: str, why: str) -> None:
    with pytest.raises(JobError, match="line 1") as info:
        plainyaml.load(text)
    assert why in str(info.value)


def test_an_alias_bomb_is_refused_before_it_is_built() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        "%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n" % ((chr(98 + i),) * 2
                                                                  + (chr(97 + i),) * 9)
        for i in range(8))
    assert len(bomb) < 500
    with pytest.raises(JobError, match="aliases are expanded"):
        plainyaml.load(bomb)


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(JobError, match=r"refers to its own anchor|nested"):
        plainyaml.load("a: &a [1, *a]\n")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(JobError, match=r"deeper|nested"):
        plainyaml.load("a: " + "[" * 200 + "]" * 200 + "\n")


def test_plain_documents_load_with_shared_aliases_and_merges() -> None:
    doc = plainyaml.load("base: &b {x: 1}\nother:\n  <<: *b\n  y: [1, 2.5, true, null, s]\n")
    assert doc == {"base": {"x": 1}, "other": {"x": 1, "y": [1, 2.5, True, None, "s"]}}
