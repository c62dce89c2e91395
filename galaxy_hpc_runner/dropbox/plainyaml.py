"""YAML for untrusted descriptions: plain types only, bounded size, no alias bombs.

The document is composed into a node graph first (aliases stay shared, so a
bomb costs nothing yet); the graph is checked for node tags, depth and the
number of nodes it would have with every alias expanded; only then is it
turned into Python objects.
"""

from __future__ import annotations

from typing import Any

import yaml

from galaxy_hpc_runner.errors import JobError

try:  # the C loader is ten times faster; fall back where libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_NODES = 20000  # every scalar, list and mapping, aliases expanded
MAX_DEPTH = 64
_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}
_TAG_NAMES = {"timestamp": "a date or time", "binary": "binary data (!!binary)",
              "set": "a set (!!set)", "omap": "an ordered map (!!omap)",
              "pairs": "a list of pairs (!!pairs)", "value": "a value key (=)"}


class _Counter:
    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def size(self, node: yaml.Node, depth: int) -> int:
        """Nodes under ``node`` with aliases expanded (memoised: a bomb is counted, not built)."""
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open:
            raise JobError("line %d: an alias refers to its own anchor (a recursive structure)"
                           % (node.start_mark.line + 1))
        if depth > MAX_DEPTH:
            raise JobError("line %d: nested deeper than %d levels" % (
                node.start_mark.line + 1, MAX_DEPTH))
        _check_tag(node)
        self.open.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(self.size(item, depth + 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(self.size(k, depth + 1) + self.size(v, depth + 1)
                         for k, v in node.value)
        self.open.discard(key)
        self.sizes[key] = total
        if total > MAX_NODES:
            raise JobError("more than %d values once aliases are expanded (line %d)"
                           % (MAX_NODES, node.start_mark.line + 1))
        return total


def _check_tag(node: yaml.Node) -> None:
    if node.tag in PLAIN_TAGS:
        return
    short = node.tag[len(_TAG):] if node.tag.startswith(_TAG) else node.tag
    what = _TAG_NAMES.get(short, "the tag %s" % node.tag)
    text = node.value if isinstance(node, yaml.ScalarNode) else ""
    raise JobError("line %d, column %d: %s%s is not allowed; use only strings, numbers, "
                   "true/false, null, lists and mappings (quote it to make it a string)"
                   % (node.start_mark.line + 1, node.start_mark.column + 1, what,
                      " (%r)" % text[:40] if text else ""))


def load(text: str) -> Any:
    """The plain data of ``text``; JobError naming the line for anything else."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _Counter().size(node, 0)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise JobError("description is not valid YAML: %s" % str(exc).replace("\n", " ")) \
            from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise JobError("description holds a value that cannot be read: %s" % exc) from None
    except RecursionError:
        raise JobError("description is nested too deeply") from None
    finally:
        loader.dispose()
