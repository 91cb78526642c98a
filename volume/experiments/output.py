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


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def strict(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None and numpy/path types made plain.

    >>> strict({"a": float("nan"), "b": [1.5, float("inf")], "c": np.int64(3)})
    {'a': None, 'b': [1.5, None], 'c': 3}
    """
    if isinstance(x, dict):
        return {str(k): strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    if isinstance(x, np.ndarray):
        return [strict(v) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, Path):
        return str(x)
    return x


def dumps(x: Any) -> str:
    """Strict JSON text of ``x`` (see :func:`strict`); raises if anything non-finite slips through."""
    return json.dumps(strict(x), indent=2, allow_nan=False)


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
