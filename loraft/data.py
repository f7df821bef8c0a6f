"""Data files: where they are looked up, and how tables and texts are read.

Recipes name local files relative to a data root. Roots are searched in order: the one given
by `--data-root` or `LORAFT_DATA_ROOT`, then `./data`, then the `data/` of the loraft checkout.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraft.errors import LoraftError
from loraft.hub import go_offline_unless_reachable, hub_dataset_cached, hub_reachable, offline_hint
from loraft.recipe import DataSection, HubData

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
PREVIEW_BYTES = 1 << 20  # `loraft validate` checks the encoding of a file's first MiB


def data_roots(explicit: str | Path | None = None) -> list[Path]:
    """The directories searched for recipe data files, first match wins."""
    given = explicit or os.environ.get("LORAFT_DATA_ROOT")
    if given and not Path(given).expanduser().is_dir():
        where = "--data-root" if explicit else "LORAFT_DATA_ROOT"
        raise LoraftError(f"{where}: {given} is not a folder")
    candidates = [Path(given).expanduser() if given else None, Path("data"), REPO_DATA]
    roots: list[Path] = []
    for candidate in candidates:
        if candidate and Path(candidate).resolve() not in roots:
            roots.append(Path(candidate).resolve())
    return roots


def find_data_file(relative: str, roots: list[Path]) -> Path | None:
    """The first existing `root/relative` (or `relative` itself if absolute), else None."""
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    for root in roots:
        if (root / path).exists():
            return root / path
    return None


def require_data_file(field: str, relative: str, roots: list[Path]) -> Path:
    """Like `find_data_file`, but a missing file is a one-line error naming the roots tried."""
    found = find_data_file(relative, roots)
    if found is None:
        tried = ", ".join(str(root) for root in roots)
        raise LoraftError(
            f"{field}: file '{relative}' not found under the data roots ({tried}); "
            "set --data-root or LORAFT_DATA_ROOT (see data/README.md)"
        )
    return found


@dataclass
class Table:
    """Rows of a data file (or hub split) as plain dicts, and where they came from."""

    columns: list[str]
    rows: list[dict[str, Any]]
    where: str
    lines: list[int] | None = None  # the file line each row starts on; None for a hub split

    def place(self, index: int) -> str:
        """Where row `index` is, for an error: `file: line 17` (a file) or `id:split: row 16`."""
        if self.lines is None:
            return f"{self.where}: row {index + 1}"
        return f"{self.where}: line {self.lines[index]}"


def read_table(path: Path, column_names: list[str] | None = None, preview: int | None = None) -> Table:
    """A CSV, TSV (sniffed: a tab in the first line), JSON Lines or JSON-array file.

    `preview=N` reads only the first N rows, through the same code (for `loraft validate`).
    Read with Python's csv and json modules rather than pandas or `datasets`: they give every
    malformed line's number, and `loraft validate` stays fast. Tab-separated files are read
    with quoting off: the CS224n and MRPC files hold bare quote characters a CSV parser would
    take for field delimiters. No value is converted: every cell is text.
    """
    check_text_file(path, limit=PREVIEW_BYTES if preview else None)
    try:
        if path.suffix in (".jsonl", ".json"):
            lines, rows = read_json_rows(path, preview)
            columns = list(dict.fromkeys(key for row in rows for key in row))
        else:
            columns, lines, rows = _read_delimited(path, column_names, preview)
    except UnicodeDecodeError as error:  # past the part `check_text_file` read
        raise LoraftError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise LoraftError(f"{path}: cannot read: {error.strerror or error}") from None
    if not rows:
        raise LoraftError(f"{path}: the file has no data rows")
    return Table(columns, rows, str(path), lines)


def read_json_rows(path: Path, limit: int | None = None) -> tuple[list[int] | None, list[dict]]:
    """The objects of a JSON Lines file (one per non-blank line) or of a JSON array, with the
    line each is on (None for an array, whose objects may share lines)."""
    with path.open(encoding="utf-8-sig") as stream:
        starts_with_array = stream.read(4096).lstrip().startswith("[")
    if starts_with_array:
        return None, _json_array(path)[:limit]
    lines, rows = [], []
    with path.open(encoding="utf-8-sig") as stream:
        for number, line in enumerate(stream, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise LoraftError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise LoraftError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            lines.append(number)
            rows.append(row)
    return lines, rows


def _json_array(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise LoraftError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise LoraftError(f"{path}: expected JSON Lines, or a JSON array of objects")
    return rows


# csv's default limit is 128 KiB a field; a long document (a book chapter in one cell) is data
csv.field_size_limit(2**31 - 1)


def _read_delimited(
    path: Path, column_names: list[str] | None, preview: int | None
) -> tuple[list[str], list[int], list[dict[str, str]]]:
    with path.open(encoding="utf-8-sig", newline="") as stream:
        tabbed = "\t" in stream.readline()
        stream.seek(0)
        options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tabbed else {}
        reader = csv.reader(stream, **options)
        try:
            columns = column_names or next(reader, [])
            if len(set(columns)) != len(columns):
                raise LoraftError(f"{path}: line 1: a column name repeats: {columns}")
            lines, rows = [], []
            start = reader.line_num + 1
            for fields in reader:
                line, start = start, reader.line_num + 1  # a quoted field may span lines
                if preview is not None and len(rows) >= preview:
                    break
                if not fields or fields == [""]:
                    continue
                if len(fields) != len(columns):
                    raise LoraftError(
                        f"{path}: line {reader.line_num}: {len(fields)} fields, expected {len(columns)} "
                        f"({', '.join(columns)})"
                    )
                lines.append(line)
                rows.append(dict(zip(columns, fields, strict=True)))
        except csv.Error as error:
            raise LoraftError(f"{path}: line {reader.line_num}: cannot read as a table: {error}") from None
    return columns, lines, rows


def to_dataset(rows: list[dict[str, Any]], where: str):
    """Converted rows as a `datasets.Dataset` (seeded splits, tokenization with `map`)."""
    try:
        return datasets_library().Dataset.from_list(rows)
    except Exception as error:  # pyarrow cannot put mixed types in one column
        raise LoraftError(f"{where}: the rows do not form a table: {_first_line(error)}") from None


def check_text_file(path: Path, limit: int | None = None) -> None:
    """A readable, non-empty UTF-8 file (the first `limit` bytes, or all); else one line."""
    if path.is_dir():
        raise LoraftError(f"{path}: is a directory, expected a file")
    if not path.is_file():  # a pipe or a device would block or never end
        raise LoraftError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        decoder = codecs.getincrementaldecoder("utf-8")()
        line, read = 1, 0
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    line += chunk[: error.start].count(b"\n")
                    raise LoraftError(
                        f"{path}: line {line}: not UTF-8 text (byte {chunk[error.start]:#04x})"
                    ) from None
                if b"\x00" in chunk:
                    line += chunk[: chunk.index(b"\x00")].count(b"\n")
                    raise LoraftError(f"{path}: line {line}: contains NUL bytes; expected a text file")
                line, read = line + chunk.count(b"\n"), read + len(chunk)
                if limit is not None and read >= limit:
                    break
    except OSError as error:
        raise LoraftError(f"{path}: cannot read: {error.strerror or error}") from None
    if size == 0:
        raise LoraftError(f"{path}: the file is empty")


def read_text(path: Path) -> str:
    """A whole text file, with Windows line ends normalised."""
    check_text_file(path)
    text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    if not text.strip():
        raise LoraftError(f"{path}: the file is empty")
    return text


def load_hub_split(hub: HubData, split: str, why: str = "") -> Table:
    """One split of a hub dataset (users online); failures become one line.

    `why` says why the hub is used (a local file that was not found), so that an offline
    user learns about the missing file, not only about the unreachable hub.
    """
    datasets = datasets_library()
    go_offline_unless_reachable()
    try:
        table = datasets.load_dataset(hub.id, hub.config, split=split)
        return Table(table.column_names, table.to_list(), f"{hub.id}:{split}")
    except Exception as error:  # datasets raises many types; all mean "cannot get it"
        hint = offline_hint(data=True) or "; set --data-root or LORAFT_DATA_ROOT (see data/README.md)"
        raise LoraftError(
            f"data.train: {why}and the hub copy '{hub.id}' (split '{split}') cannot be loaded: "
            f"{_first_line(error)}{hint}"
        ) from None


def require_hub_copy(hub: HubData, why: str) -> None:
    """Offline, a hub dataset loads only from the local cache: say at once when it is not there
    (before torch is imported or a model loaded)."""
    if not hub_reachable() and not hub_dataset_cached(hub.id):
        raise LoraftError(
            f"data.train: {why}and the hub copy '{hub.id}' is not in the local cache{offline_hint(data=True)}"
        )


def require_columns(table: Table, needed: list[str]) -> None:
    """Fail with the columns that are there when a needed one is missing."""
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise LoraftError(
            f"{table.where}: column '{missing[0]}' not found; the columns are "
            f"{', '.join(table.columns)} (map yours with data.columns.<field>=<column>)"
        )


def column_for(data: DataSection, field: str) -> str:
    """The data column that holds a task field (recipes may rename it with data.columns)."""
    return data.columns.get(field, field)


def datasets_library():
    """`datasets`, imported when first needed (it is slow to import) and kept quiet."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
