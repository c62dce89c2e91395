"""Script templates: bash with ``<<name>>`` placeholders, every value shell-quoted."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from galaxy_hpc_runner.errors import JobError

PLACEHOLDER = re.compile(r"<<([A-Za-z_][A-Za-z0-9_]*)>>")
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUFFIX = ".sh"


def template_path(templates_dir: Path, name: object) -> Path:
    """The file of template ``name``; a name with a path in it or no file is an error."""
    if not isinstance(name, str) or not TEMPLATE_NAME.match(name) or ".." in name:
        raise JobError("script %r is not a plain template name (letters, digits, '.', '_', '-')"
                       % (name,))
    path = templates_dir / (name + SUFFIX)
    if not path.is_file():
        raise JobError("unknown template %r: no %s" % (name, path))
    return path


def shell_value(value: object) -> str:
    """One shell word for a YAML scalar: ``6`` stays ``6``, anything odd is quoted."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        raise JobError("value %r is not a scalar (string, number or boolean)" % (value,))
    return shlex.quote(text)


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, object], template: str = "template") -> str:
    """Fill every placeholder in one pass, so placeholders inside values stay literal."""
    unknown = sorted(placeholders(text) - set(values))
    if unknown:
        raise JobError("%s uses placeholder(s) the job does not define: %s" % (
            template, ", ".join("<<%s>>" % name for name in unknown)))
    quoted = {name: shell_value(values[name]) for name in placeholders(text)}
    return PLACEHOLDER.sub(lambda m: quoted[m.group(1)], text)
