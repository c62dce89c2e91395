"""Script templates: bash with ``<<name>>`` placeholders, every value one literal shell word.

A template is checked when it is loaded. The value of a placeholder is
shell-quoted (``shlex.quote``), which is exact only where the shell reads a
plain unquoted word, so a placeholder must stand in such a word (alone or as
part of one: ``--out=<<output>>``, ``/mnt/<<input>>``, ``x=<<level>>``,
array elements ``x=( <<a>> )``, including inside ``$( ... )``). Anywhere else is a
template error naming the file, line and column:

- inside single, double or ``$'...'`` quotes, backquotes, ``${ ... }``,
  arithmetic (``$(( ))``, ``(( ))``) or a here-document body;
- in command position (the value would choose the program);
- as an argument of ``eval``, ``let``, ``source``/``.``, ``trap``, ``alias``,
  ``declare``/``typeset``/``local`` ``-i`` style commands, or inside ``[[ ]]``
  (each of these evaluates its arguments again).

A placeholder in a comment is never filled in (it stays as written).
"""

from __future__ import annotations

import bisect
import functools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from galaxy_hpc_runner.errors import JobError

PLACEHOLDER = re.compile(r"<<([A-Za-z_][A-Za-z0-9_]*)>>")
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
SUFFIX = ".sh"
MAX_TEMPLATE_BYTES = 1 << 20
EVALUATING = {"eval", "let", "source", ".", "trap", "alias", "declare", "typeset", "local",
              "readonly", "export", "[[", "exec", "command", "builtin", "coproc"}
KEEP_COMMAND = {"then", "else", "elif", "if", "while", "until", "do", "!", "{", "time"}
NOT_COMMAND = {"for", "case", "select", "in"}
OK, COMMENT = "", "comment"


@dataclass
class Occurrence:
    name: str
    start: int
    end: int
    problem: str = OK  # OK, COMMENT (left as written) or why it is refused


@dataclass
class _Frame:
    kind: str  # "N" (commands), "'", '"', "`", "${", "((", "$'"
    closer: str = ""
    depth: int = 0  # parentheses or braces inside
    cmd_start: bool = True
    command: str = ""  # the first word of the current simple command
    word: list[str] = field(default_factory=list)
    word_at_cmd: bool = False
    word_marks: list[Occurrence] = field(default_factory=list)
    redirect: bool = False
    array: bool = False  # the elements of x=( ... )


_CONTEXT = {"'": "inside single quotes", '"': "inside double quotes", "`": "inside backquotes",
            "${": "inside ${...}", "((": "inside arithmetic", "$'": "inside $'...' quotes"}


class _Lexer:
    """Finds every placeholder and the shell context it stands in (bash, simplified)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.stack = [_Frame("N")]
        self.found: list[Occurrence] = []
        self.heredocs: list[tuple[str, bool]] = []

    def run(self) -> list[Occurrence]:
        while self.i < len(self.text):
            if not self._placeholder():
                self._step()
        if self.stack[-1].kind == "N":
            self._end_word(self.stack[-1])
        return self.found

    # -- placeholders ------------------------------------------------------------------
    def _placeholder(self) -> bool:
        m = PLACEHOLDER.match(self.text, self.i)
        if not m:
            return False
        occ = Occurrence(m.group(1), m.start(), m.end())
        self.found.append(occ)
        top = self.stack[-1]
        nested = [f.kind for f in self.stack if f.kind != "N"]
        if nested:
            occ.problem = _CONTEXT[nested[0]]
        else:
            if not top.word:
                top.word_at_cmd = top.cmd_start and not top.redirect
            top.word.append("\0")
            top.word_marks.append(occ)
        self.i = m.end()
        return True

    # -- one step in the current context -----------------------------------------------
    def _step(self) -> None:
        top = self.stack[-1]
        if top.kind == "N" or top.kind == "`":
            self._command_char(top)
        elif top.kind == "'":
            self._close_at("'")
        elif top.kind == "$'":
            self.i += 2 if self.text[self.i] == "\\" else 0
            self._close_at("'")
        elif top.kind == '"':
            self._double_quoted()
        else:
            self._nested_expansion(top)

    def _close_at(self, closer: str) -> None:
        if self.text.startswith(closer, self.i):
            self.stack.pop()
            self.i += len(closer)
        else:
            self.i += 1

    def _double_quoted(self) -> None:
        c = self.text[self.i]
        if c == "\\":
            self.i += 2
        elif c == '"':
            self.stack.pop()
            self.i += 1
        elif not self._expansion_start():
            self.i += 1

    def _nested_expansion(self, top: _Frame) -> None:
        """Inside ``${...}`` or arithmetic: count brackets until the closer."""
        c = self.text[self.i]
        opener, closer = ("{", "}") if top.kind == "${" else ("(", ")")
        if top.kind == "((" and top.depth == 0 and self.text.startswith("))", self.i):
            self.stack.pop()
            self.i += 2
        elif c == closer and top.depth == 0:
            self.stack.pop()
            self.i += 1
        elif c in "'\"":
            self.stack.append(_Frame(c))
            self.i += 1
        elif c == "\\":
            self.i += 2
        elif not self._expansion_start():
            top.depth += (c == opener) - (c == closer)
            self.i += 1

    def _expansion_start(self) -> bool:
        """``$((``, ``$(``, ``${``, ``$'`` or a backquote at the cursor: push its frame."""
        t, i = self.text, self.i
        for prefix, frame in (("$((", _Frame("((")), ("$(", _Frame("N", closer=")")),
                              ("${", _Frame("${")), ("`", _Frame("`"))):
            if t.startswith(prefix, i):
                self.stack.append(frame)
                self.i += len(prefix)
                return True
        return False

    # -- commands ------------------------------------------------------------------------
    def _command_char(self, top: _Frame) -> None:
        t, c = self.text, self.text[self.i]
        if top.kind == "`" and c == "`":
            self.stack.pop()
            self.i += 1
        elif c == "#" and not top.word:
            self._comment()
        elif c == "\\":
            self._word_char(top, t[self.i:self.i + 2])
        elif c == "\n":
            self._end_word(top)
            self.i += 1
            top.cmd_start, top.command = not top.array, ""
            self._heredoc_bodies()
        elif c in " \t":
            self._end_word(top)
            self.i += 1
        elif c in ";&|()<>":
            self._operator(top)
        elif t.startswith("$'", self.i):
            self._word_char(top, "")
            self.stack.append(_Frame("$'"))
            self.i += 2
        elif c in "'\"":
            self._word_char(top, c)
            self.stack.append(_Frame(c))
        elif c == "`" or (c == "$" and t[self.i + 1:self.i + 2] in ("(", "{")):
            self._word_char(top, "")
            self._expansion_start()
        else:
            self._word_char(top, c)

    def _word_char(self, top: _Frame, chars: str) -> None:
        if not top.word:
            top.word_at_cmd = top.cmd_start and not top.redirect
        top.word.append(chars)
        self.i += len(chars)

    def _end_word(self, top: _Frame) -> None:
        if not top.word:
            return
        word = "".join(top.word)
        marks, at_cmd = top.word_marks, top.word_at_cmd
        top.word, top.word_marks = [], []
        if top.redirect:
            top.redirect = False
        elif at_cmd:
            self._command_word(top, word, marks)
            return
        if top.command in EVALUATING:
            for occ in marks:
                occ.problem = "an argument of %r, which evaluates it again" % top.command
        if word == "]]" and top.command == "[[":
            top.command = ""

    def _command_word(self, top: _Frame, word: str, marks: list[Occurrence]) -> None:
        if ASSIGNMENT.match(word):
            return  # x=<<value>> : still before the command
        for occ in marks:
            occ.problem = "in command position (the value would choose the program)"
        if word in KEEP_COMMAND:
            return
        top.cmd_start = False
        if word not in NOT_COMMAND:
            top.command = word.replace("\0", "")

    def _operator(self, top: _Frame) -> None:
        assigning = "".join(top.word).endswith("=")
        self._end_word(top)
        t, i = self.text, self.i
        if t.startswith("((", i) and top.cmd_start:
            self.stack.append(_Frame("(("))
            self.i += 2
        elif t[i] == "(" and assigning:  # x=( a b ): array elements, not commands
            self.stack.append(_Frame("N", closer=")", cmd_start=False, array=True))
            self.i += 1
        elif t.startswith("&>", i):
            self.i += 2 + t.startswith("&>>", i)
            top.redirect = True
        elif t.startswith("<<", i) and not t.startswith("<<<", i):
            self._heredoc_start()
        elif t[i] in "<>":
            self.i += 1 + (t[i + 1:i + 2] in ("&", ">", "|"))
            top.redirect = True
        elif t[i] == ")" and top.closer == ")" and top.depth == 0:
            self.stack.pop()
            self.i += 1
        else:
            top.depth += (t[i] == "(") - (t[i] == ")")
            top.cmd_start = t[i] != ")"
            if top.cmd_start:
                top.command = ""
            self.i += 1

    # -- comments and here-documents ------------------------------------------------------
    def _comment(self) -> None:
        end = self.text.find("\n", self.i)
        end = len(self.text) if end < 0 else end
        for m in PLACEHOLDER.finditer(self.text, self.i, end):
            self.found.append(Occurrence(m.group(1), m.start(), m.end(), COMMENT))
        self.i = end

    def _heredoc_start(self) -> None:
        m = re.compile(r"<<(-?)[ \t]*(['\"]?)\\?([A-Za-z0-9_.-]+)\2").match(self.text, self.i)
        if not m:
            self.i += 2
            return
        self.heredocs.append((m.group(3), m.group(1) == "-"))
        self.i = m.end()

    def _heredoc_bodies(self) -> None:
        while self.heredocs:
            delimiter, strip_tabs = self.heredocs.pop(0)
            while self.i < len(self.text):
                end = self.text.find("\n", self.i)
                end = len(self.text) if end < 0 else end
                line = self.text[self.i:end]
                for m in PLACEHOLDER.finditer(line):
                    self.found.append(Occurrence(m.group(1), self.i + m.start(),
                                                 self.i + m.end(), "inside a here-document"))
                self.i = end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break


@functools.lru_cache(maxsize=64)
def scan(text: str) -> tuple[Occurrence, ...]:
    """Every placeholder of a template with its context (cached: templates rarely change)."""
    return tuple(_Lexer(text).run())


def _line_col(text: str, offset: int) -> tuple[int, int]:
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    line = bisect.bisect_right(starts, offset)
    return line, offset - starts[line - 1] + 1


def template_errors(text: str, where: str = "template") -> list[str]:
    """``FILE:LINE:COL: ...`` for every placeholder outside a plain unquoted word."""
    return ["%s:%d:%d: placeholder <<%s>> %s; use it as a plain unquoted word"
            % ((where,) + _line_col(text, occ.start) + (occ.name, occ.problem))
            for occ in scan(text) if occ.problem not in (OK, COMMENT)]


def template_path(templates_dir: Path, name: object) -> Path:
    """The file of template ``name``; a name with a path in it or no file is an error."""
    if not isinstance(name, str) or not TEMPLATE_NAME.match(name) or ".." in name:
        raise JobError("script %r is not a plain template name (letters, digits, '.', '_', '-')"
                       % (name,))
    path = templates_dir / (name + SUFFIX)
    if not path.is_file():
        raise JobError("unknown template %r: no %s" % (name, path))
    return path


def load_template(path: Path) -> str:
    """A template's text, checked: a JobError names file, line and column of each problem."""
    data = path.read_bytes()
    if len(data) > MAX_TEMPLATE_BYTES:
        raise JobError("template %s is larger than %d bytes" % (path, MAX_TEMPLATE_BYTES))
    text = data.decode("utf-8")
    errors = template_errors(text, str(path))
    if errors:
        raise JobError("template error: %s" % "; ".join(errors))
    return text


def check_templates(directory: Path) -> list[str]:
    """Every problem of every template in ``directory`` (for ``hpc-batch check``)."""
    problems: list[str] = []
    for path in sorted(directory.glob("*" + SUFFIX)):
        try:
            load_template(path)
        except (JobError, OSError, UnicodeDecodeError) as exc:
            problems.append(str(exc))
    return problems


def shell_value(value: object, name: str = "value") -> str:
    """One shell word for a YAML scalar: ``6`` stays ``6``, anything odd is quoted."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        raise JobError("<<%s>>: value %r is not a scalar (string, number or boolean)"
                       % (name, value))
    if "\0" in text:
        raise JobError("<<%s>>: the value contains a NUL byte, which no shell word can hold"
                       % name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JobError("<<%s>>: the value is not valid Unicode text" % name) from None
    return shlex.quote(text)


def placeholders(text: str) -> set[str]:
    return {occ.name for occ in scan(text) if occ.problem != COMMENT}


def render(text: str, values: dict[str, object], template: str = "template") -> str:
    """Fill every placeholder in one pass, so placeholders inside values stay literal."""
    errors = template_errors(text, template)
    if errors:
        raise JobError("template error: %s" % "; ".join(errors))
    unknown = sorted(placeholders(text) - set(values))
    if unknown:
        raise JobError("%s uses placeholder(s) the job does not define: %s" % (
            template, ", ".join("<<%s>>" % name for name in unknown)))
    out, last = [], 0
    for occ in scan(text):
        if occ.problem == COMMENT:
            continue
        out.append(text[last:occ.start])
        out.append(shell_value(values[occ.name], occ.name))
        last = occ.end
    out.append(text[last:])
    return "".join(out)
