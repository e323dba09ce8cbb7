"""Reading a run directory's metrics.jsonl: one reader for training, plots and experiment collection."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file, in order; [] when the file does not exist.

    A last line cut short (a process killed while appending) is ignored; a malformed line
    anywhere else raises ValueError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {n} is not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {n} is not a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
