"""Property: any value, in every allowed template context, arrives as exactly its bytes.

Thousands of random values (quotes, $, backquotes, backslashes, newlines,
unicode, globs, leading '-') are rendered into each context a template may use
and the script is executed by bash: the bytes that arrive are the value's, and
nothing else happens (no file appears, no command of the value runs).
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox.templates import render, template_errors

COUNT = 1000  # values per context
ALPHABET = list("abcXYZ019 \t\n'\"`$\\(){}[]<>|;&*?~#!=%^,.:-+/@") + [
    "é", "中", "🙂", "\u200b", "\r", "$(touch pwned)", "`touch pwned`", "'; touch pwned; '",
    "\"; touch pwned; \"", "${IFS}", "$((1+1))", "<<v0>>", "-n", "-e", "--", "\\n"]

# context name -> (template line for placeholder NAME, how the value comes out)
CONTEXTS = {
    "plain word": ("printf '%%s\\0' <<%s>>", lambda v: v),
    "part of a word": ("printf '%%s\\0' pre<<%s>>post", lambda v: "pre" + v + "post"),
    "assignment": ("x=<<%s>>; printf '%%s\\0' \"$x\"", lambda v: v),
    "command substitution": ("x=$(printf '%%s.' <<%s>>); printf '%%s\\0' \"${x%%.}\"",
                             lambda v: v),
    "for list": ("for f in <<%s>>; do printf '%%s\\0' \"$f\"; done", lambda v: v),
    "array element": ("arr=(first <<%s>>); printf '%%s\\0' \"${arr[1]}\"", lambda v: v),
}


def _value(rng: random.Random) -> object:
    kind = rng.random()
    if kind < 0.05:
        return rng.choice([0, -7, 10 ** 30, 2.5, -0.0, 1e-300, True, False, None])
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
    if kind < 0.15:
        text = "-" + text
    return text


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@pytest.mark.parametrize("context", list(CONTEXTS))
def test_every_value_arrives_exactly_and_nothing_else_happens(
        context: str, tmp_path: Path) -> None:
    line, expect = CONTEXTS[context]
    rng = random.Random("%s-%d" % (context, COUNT))
    values = {"v%d" % i: _value(rng) for i in range(COUNT)}
    template = "#!/bin/bash\nset -u\n" + "".join(
        (line % name) + " >> out\n" for name in values)
    assert template_errors(template) == []
    script = tmp_path / "job.sh"
    script.write_text(render(template, values), encoding="utf-8")
    proc = subprocess.run(["bash", "--norc", "--noprofile", str(script)], cwd=tmp_path,
                          capture_output=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = (tmp_path / "out").read_bytes().split(b"\0")[:-1]
    want = [expect(_text(v)).encode("utf-8") for v in values.values()]
    assert len(got) == len(want)
    for name, have, should in zip(values, got, want, strict=True):
        assert have == should, (name, values[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.sh", "out"]
    assert proc.stdout == b"" and proc.stderr == b""
