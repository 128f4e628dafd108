"""Load GSM-Infinite rows from local Hub-format files (the Hub itself is not needed).

Accepted: one file or a directory searched recursively for `.parquet`, `.jsonl` and `.json`
files (a JSON file holds a list of rows, or one row per line). The Hub stores every op count
as a split named `ops_{k}` (`data/ops_3-00000-of-00001.parquet` in a downloaded repository);
the public generator writes `igsm_op3_...jsonl`. Rows carry their `op` field; where a row
lacks it, the op count is read from the file name (`ops_3`, `op3`).

Required fields: problem, question, solution, op; the symbolic subset also answer_q and
answer_list (its scoring needs them). A file with none of these fields, or missing some, is
a ValueError that names the file, the missing fields and the fields it does have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from ...checks import is_int

SUBSETS = ("symbolic", "medium", "hard")
COMMON_FIELDS = ("problem", "question", "solution", "op")
SYMBOLIC_FIELDS = (*COMMON_FIELDS, "answer_q", "answer_list")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
_OP_IN_NAME = re.compile(r"(?:^|[^a-z])ops?_?(\d+)(?:[^0-9]|$)", re.IGNORECASE)


def check_subset(subset: str) -> str:
    if subset not in SUBSETS:
        raise ValueError(f"unknown GSM-Infinite subset {subset!r}; expected one of {list(SUBSETS)}")
    return subset


def required_fields(subset: str) -> tuple[str, ...]:
    return SYMBOLIC_FIELDS if check_subset(subset) == "symbolic" else COMMON_FIELDS


def check_ops(ops: Iterable[Any]) -> list[int]:
    """Validate a collection of op counts (positive ints)."""
    checked = []
    for op in ops:
        if not is_int(op) or op < 1:
            raise ValueError(f"op counts must be positive ints, got {op!r}")
        checked.append(op)
    if not checked:
        raise ValueError("ops must name at least one op count")
    return checked


def data_files(path: str | Path) -> list[Path]:
    """The data files at `path` (a file, or a directory searched recursively), sorted."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"GSM-Infinite data path does not exist: {root}")
    if root.is_file():
        if root.suffix not in DATA_SUFFIXES:
            raise ValueError(f"{root}: expected a {'/'.join(DATA_SUFFIXES)} file, got suffix {root.suffix!r}")
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(DATA_SUFFIXES)} files under {root}")
    return files


def _read_rows(file: Path) -> list[dict[str, Any]]:
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(file).to_pylist()
    text = file.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if file.suffix == ".json" and stripped.startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{file}: expected JSON objects (one row each)")
    return rows


def _op_from_name(file: Path) -> int | None:
    match = _OP_IN_NAME.search(file.stem)
    return int(match.group(1)) if match else None


def _detect_subset(fields: set[str]) -> str | None:
    if "answer_list" in fields or "answer_q" in fields:
        return "symbolic"
    return None  # realistic; medium and hard rows look alike


def load_gsm_infinite(
    path: str | Path,
    *,
    subset: str | None = None,
    ops: Iterable[int] | None = None,
) -> datasets.Dataset:
    """Load Hub-format GSM-Infinite rows from `path` into one `datasets.Dataset`.

    `subset` ("symbolic", "medium", "hard") sets the required fields; by default it is
    inferred (symbolic rows have `answer_list`). `ops` keeps only those op counts and is an
    error if the data lacks any of them."""
    if subset is not None:
        check_subset(subset)
    wanted = set(check_ops(ops)) if ops is not None else None
    rows: list[dict[str, Any]] = []
    kinds: dict[str, Path] = {}
    for file in data_files(path):
        file_rows = _read_rows(file)
        if not file_rows:
            continue
        name_op = _op_from_name(file)
        fields: set[str] = set().union(*(row.keys() for row in file_rows))
        if "op" not in fields and name_op is not None:
            for row in file_rows:
                row["op"] = name_op
            fields.add("op")
        kind = subset or _detect_subset(fields) or "medium"
        expected = required_fields(kind)
        present = [f for f in expected if f in fields]
        missing = [f for f in expected if f not in fields]
        if not present:
            raise ValueError(
                f"{file}: none of the expected GSM-Infinite fields {list(expected)} found; "
                f"found fields: {sorted(fields)}"
            )
        if missing:
            raise ValueError(
                f"{file}: missing GSM-Infinite fields {missing} (subset {kind!r}); "
                f"found fields: {sorted(fields)}"
            )
        incomplete = [i for i, row in enumerate(file_rows) if any(row.get(f) is None for f in expected)]
        if incomplete:
            raise ValueError(f"{file}: row {incomplete[0]} has no value for one of {list(expected)}")
        family = "symbolic" if kind == "symbolic" else "realistic"
        kinds.setdefault(family, file)
        for row in file_rows:
            op = row["op"]
            if isinstance(op, str) and op.isdigit():
                op = int(op)
            if not is_int(op) or op < 1:
                raise ValueError(f"{file}: op must be a positive int, got {row['op']!r}")
            row["op"] = op
        rows.extend(file_rows)
    if len(kinds) > 1:
        raise ValueError(
            f"{path} mixes symbolic ({kinds['symbolic']}) and realistic ({kinds['realistic']}) files"
        )
    if not rows:
        raise ValueError(f"{path}: the data files hold no rows")
    if wanted is not None:
        available = sorted({row["op"] for row in rows})
        absent = sorted(wanted - set(available))
        if absent:
            raise ValueError(f"op counts {absent} are not in {path}; available op counts: {available}")
        rows = [row for row in rows if row["op"] in wanted]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return datasets.Dataset.from_list([{key: row.get(key) for key in columns} for row in rows])
