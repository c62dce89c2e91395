"""The summary table: one row per case, counted over all its repetitions."""

from __future__ import annotations

from dataclasses import dataclass, field

COLUMNS = ("case", "reps", "jobs", "runs", "ok", "lost", "duplicated", "orphans",
           "pilots max", "unknown pilots", "seconds")


@dataclass
class Row:
    case: str
    reps: int = 0
    jobs: int = 0
    runs: int = 0  # starts of the tool, every attempt counted (the ledger)
    ok: int = 0  # jobs with exactly one ok result and exact outputs
    lost: int = 0  # jobs without that (no result, an error, wrong outputs)
    duplicated: int = 0  # jobs whose tool ran to its end more than once
    orphans: int = 0  # tool processes of a dead attempt alive after its pilot
    pilots_max: int = 0  # most pilots queued or running at once (Slurm)
    unknown_pilots: int = 0  # Slurm pilots `status` does not know
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def cells(self) -> list[str]:
        return [self.case, str(self.reps), str(self.jobs), str(self.runs), str(self.ok),
                str(self.lost), str(self.duplicated), str(self.orphans), str(self.pilots_max),
                str(self.unknown_pilots), "%.0f" % self.seconds]


ROWS: list[Row] = []  # every row of this process, for the pytest terminal summary


def render(rows: list[Row], title: str = "") -> str:
    """The rows as a plain-text table, then each problem (at most 5 per case)."""
    body = [list(COLUMNS)] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]

    def fmt(line: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    lines = [title] if title else []
    lines += [fmt(body[0]), fmt(["-" * w for w in widths])] + [fmt(line) for line in body[1:]]
    for row in rows:
        for problem in row.problems[:5]:
            lines.append("! %s: %s" % (row.case, problem))
        if len(row.problems) > 5:
            lines.append("! %s: ... %d more" % (row.case, len(row.problems) - 5))
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    """The same table for docs/ops.md."""
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(row.cells()) + " |" for row in rows])
