"""Data files: where they are looked up, and how tables and texts are read (via `datasets`).

Recipes name local files relative to a data root. Roots are searched in order: the one given
by `--data-root` or `LORAFT_DATA_ROOT`, then `./data`, then the `data/` of the loraft checkout.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets

from loraft.errors import LoraftError
from loraft.recipe import DataSection, HubData

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()


def data_roots(explicit: str | Path | None = None) -> list[Path]:
    """The directories searched for recipe data files, first match wins."""
    candidates = [explicit or os.environ.get("LORAFT_DATA_ROOT"), Path("data"), REPO_DATA]
    roots: list[Path] = []
    for candidate in candidates:
        if candidate and Path(candidate).resolve() not in roots:
            roots.append(Path(candidate).resolve())
    return roots


def find_data_file(relative: str, roots: list[Path]) -> Path | None:
    """The first existing `root/relative` (or `relative` itself if absolute), else None."""
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for root in roots:
        if (root / path).is_file():
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


def read_table(path: Path, column_names: list[str] | None = None) -> datasets.Dataset:
    """Read a CSV, TSV (sniffed: a tab in the first line) or JSON Lines file as a Dataset.

    Tab-separated files are read with quoting off: the CS224n and MRPC files contain bare
    quote characters that a CSV parser would take for field delimiters.
    """
    if path.stat().st_size == 0:
        raise LoraftError(f"{path}: the file is empty")
    if path.suffix in (".jsonl", ".json"):
        table = _load(path, "json", data_files=str(path))
    else:
        first_line = path.open(encoding="utf-8-sig").readline()
        options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if "\t" in first_line else {}
        if column_names:
            options["column_names"] = column_names
        table = _load(
            path,
            "csv",
            data_files=str(path),
            encoding="utf-8-sig",
            keep_default_na=False,
            **options,
        )
    if len(table) == 0:
        raise LoraftError(f"{path}: the file has no data rows")
    return table


def read_text(path: Path) -> str:
    """A whole text file, with Windows line ends normalised."""
    try:
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise LoraftError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise LoraftError(f"{path}: the file is empty")
    return text


def load_hub_split(hub: HubData, split: str, why: str = "") -> datasets.Dataset:
    """One split of a hub dataset (users online); failures become one line.

    `why` says why the hub is used (a local file that was not found), so that an offline
    user learns about the missing file, not only about the unreachable hub.
    """
    try:
        return datasets.load_dataset(hub.id, hub.config, split=split)
    except Exception as error:  # datasets raises many types; all mean "cannot get it"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoraftError(
            f"data.train: {why}and the hub copy '{hub.id}' (split '{split}') cannot be loaded: {reason}; "
            "set --data-root or LORAFT_DATA_ROOT (see data/README.md)"
        ) from None


def require_columns(table: datasets.Dataset, needed: list[str], where: str) -> None:
    """Fail with the columns that are there when a needed one is missing."""
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise LoraftError(
            f"{where}: column '{missing[0]}' not found; the columns are "
            f"{', '.join(table.column_names)} (map yours with data.columns.<field>=<column>)"
        )


def column_for(data: DataSection, field: str) -> str:
    """The data column that holds a task field (recipes may rename it with data.columns)."""
    return data.columns.get(field, field)


def _load(path: Path, builder: str, **options) -> datasets.Dataset:
    try:
        return datasets.load_dataset(builder, split="train", keep_in_memory=True, **options)
    except Exception as error:  # parser errors of pandas/pyarrow: report them as bad input
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoraftError(f"{path}: cannot read as {builder}: {reason}") from None
