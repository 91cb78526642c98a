"""What every experiment writes: CSV tables, strict JSON, and a short Markdown report.

* :func:`write_csv`: one row per dict, columns in order of first appearance, written to a
  temporary file and renamed into place.
* :func:`strict` / :func:`write_json`: JSON that every parser accepts: NaN and infinities
  become ``null`` (``json.dumps(..., allow_nan=False)`` would refuse them otherwise), numpy
  scalars and arrays become numbers and lists, tuples and paths become lists and strings.
* :func:`write_report`: ``report.md`` with the figures, tables of the main numbers and the
  config that made them, so a results directory explains itself.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from volume.checks import json_safe


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def dumps(x: Any) -> str:
    """Strict JSON text of ``x`` (``volume.checks.json_safe``: non-finite numbers become null);
    raises if anything non-finite slips through."""
    return json.dumps(json_safe(x), indent=2, allow_nan=False)


def write_json(path: Path, x: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(x) + "\n")
    tmp.replace(path)


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant figures, missing values as '-'."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"
    return str(v)


def markdown_table(rows: Iterable[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(path: Path, title: str, sections: list[tuple[str, str]], config: dict, figures: list[str],
                 command: str = "") -> None:
    """``report.md``: title, the command, the figures, ``sections`` (heading, Markdown body) and
    the config (strict JSON) that made them."""
    parts = [f"# {title}", ""]
    if command:
        parts += ["Made with:", "", "```bash", command, "```", ""]
    for fig in figures:
        parts += [f"![{fig}]({fig})", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    parts += ["## Config", "", "```json", dumps(config), "```", ""]
    path.write_text("\n".join(parts))
