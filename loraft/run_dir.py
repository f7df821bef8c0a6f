"""The run directory: a self-describing record of one run, and the only place its names live.

.loraft-run        marker: this folder was made by loraft (nothing else is ever deleted)
recipe.yaml        the fully resolved recipe
metrics.jsonl      one JSON object per logged step (`kind: train`) and evaluation (`kind: eval`)
summary.json       parameters, speed, memory, final and best metrics (written last)
inputs.json        what the numbers depend on: data files and base model, sized and hashed
base_model/        a from-scratch base and its tokenizer (LoRA/head runs reload on top of it)
checkpoints/best/  weights with the best `eval.metric`; checkpoints/last/: the latest weights
train_state/       full training states (optimizer, scheduler, RNG, step) for --resume
generations.jsonl, predictions.csv, eval-best/, eval-last/, tensorboard/, wandb/: outputs
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from loraft.errors import LoraftError
from loraft.recipe import TRACKERS, Recipe

MARKER = ".loraft-run"
GENERATIONS_FILE = "generations.jsonl"
PREDICTIONS_FILE = "predictions.csv"
CHECKPOINT_NAMES = ("best", "last")
LOCK_FILE = ".loraft-lock"
RUNS_FOLDER = Path("runs")  # where runs go by default, relative to the working folder
BASE_MODEL = "base_model"
TRAIN_STATE = "train_state"
STAGING_PREFIX = ".tmp-"  # a folder being written, renamed into place when complete
OLD_SUFFIX = ".old"  # the previous copy, kept until the new one is in place
# Files and folders loraft writes whole at the top of a run directory; --overwrite removes these
# (the lock file stays: it is how two processes tell each other the folder is in use).
OWN_ENTRIES = (
    MARKER,
    "recipe.yaml",
    "metrics.jsonl",
    "summary.json",
    "inputs.json",
    BASE_MODEL,
    GENERATIONS_FILE,
    PREDICTIONS_FILE,
    "eval-best",
    "eval-last",
)
# Folders loraft shares with whatever a user may put there: only loraft's entries are removed.
OWN_INSIDE = {
    "checkpoints": tuple(
        f"{before}{name}{after}"
        for name in CHECKPOINT_NAMES
        for before, after in (("", ""), ("", OLD_SUFFIX), (STAGING_PREFIX, ""))
    ),
    TRAIN_STATE: ("step-*", f"{STAGING_PREFIX}step-*", f"*{OLD_SUFFIX}"),
}
STATE_NAME = re.compile(r"^step-(\d+)$")  # train_state/step-00000120: the state after step 120


class RunDirectory:
    """Paths and files of one run; never replaces anything loraft did not write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- finding and creating -----------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        """An existing run directory (for eval, generate, compare, export, resume)."""
        run = cls(path)
        if not run.is_run():
            raise LoraftError(f"{run.path}: not a loraft run directory (no {MARKER} marker)")
        run.refuse_symlinks()
        return run

    def is_run(self) -> bool:
        return (self.path / MARKER).is_file()

    def created(self) -> str:
        """When loraft created the run (from its marker)."""
        try:
            return json.loads((self.path / MARKER).read_text(encoding="utf-8")).get("created", "")
        except (OSError, ValueError):
            return ""

    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    @classmethod
    def check_available(cls, path: str | Path, overwrite: bool = False) -> RunDirectory:
        """Fail early when `path` cannot hold a fresh run; deletes nothing."""
        run = cls(path)
        refuse_special_folder(run.path)
        if run.path.exists() and not run.path.is_dir():
            raise LoraftError(f"output_dir: {run.path} is a file, not a directory")
        run.require_writable()
        if not run.path.is_dir() or not any(p.name != LOCK_FILE for p in run.path.iterdir()):
            return run
        if not run.is_run():
            raise LoraftError(
                f"output_dir: {run.path} is not empty and is not a loraft run; "
                "choose another output_dir=... (loraft never deletes it)"
            )
        run.refuse_symlinks()
        if not overwrite:
            state = "a finished run" if run.is_finished() else "an unfinished run"
            hint = "" if run.is_finished() else ", --resume to continue it,"
            raise LoraftError(
                f"{run.path}: {state} is already there; pass --overwrite to replace it{hint} "
                "or choose another output_dir=..."
            )
        return run

    def require_writable(self) -> None:
        """Fail now, not after the model has loaded, when the folder cannot be written: the
        folder itself, or the nearest folder above it that exists (a test write, which a
        read-only file system refuses even to root)."""
        import tempfile

        folder = self.path.resolve()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise LoraftError(
                f"output_dir: cannot write in {folder} ({error.strerror or error}); "
                "choose another output_dir=..."
            ) from None

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDirectory:
        """A fresh run directory; with `overwrite`, an earlier run's own files are removed first."""
        run = cls.check_available(path, overwrite)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LoraftError(f"output_dir: cannot create {run.path}: {error.strerror or error}") from None
        run.lock()
        if run.is_run():
            run.remove_own_files()
        marker = {"created_by": "loraft", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_atomically(run.path / MARKER, json.dumps(marker) + "\n")
        return run

    def refuse_symlinks(self) -> None:
        """loraft writes and deletes inside a run folder only: an entry of its own that is a
        symbolic link (`train_state` pointing at a folder of yours) would take both outside."""
        own = [*OWN_ENTRIES, *OWN_INSIDE, *TRACKERS, LOCK_FILE]
        entries = [self.path / name for name in own]
        for folder, patterns in OWN_INSIDE.items():
            if (self.path / folder).is_dir() and not (self.path / folder).is_symlink():
                inside = (self.path / folder).iterdir()
                entries += [entry for entry in inside if any(entry.match(p) for p in patterns)]
        for entry in entries:
            if entry.is_symlink():
                raise LoraftError(
                    f"{entry}: a symbolic link where loraft keeps its own files; loraft never writes or "
                    "deletes through one: replace it with a real folder or file"
                )

    def remove_own_files(self) -> None:
        """Delete what loraft wrote here (marker last); anything else in the folder stays:
        a tracker folder only if the run used that tracker, loraft's own checkpoints only.
        Symbolic links are refused before anything is deleted (`refuse_symlinks`)."""
        self.refuse_symlinks()
        trackers = self._trackers()
        own = {*OWN_ENTRIES, *(f"{STAGING_PREFIX}{name}" for name in OWN_ENTRIES), *trackers}
        for folder, patterns in OWN_INSIDE.items():
            if (self.path / folder).is_dir():
                for entry in list((self.path / folder).iterdir()):
                    if any(entry.match(pattern) for pattern in patterns):
                        _remove(entry)
                with contextlib.suppress(OSError):  # kept when a user's file is inside
                    (self.path / folder).rmdir()
        for entry in sorted(self.path.iterdir(), key=lambda p: p.name == MARKER):
            if entry.name in own:
                _remove(entry)

    def _trackers(self) -> list[str]:
        """The trackers the recipe in this folder listed (their folders are loraft's)."""
        try:
            return list(self.read_recipe().train.trackers)
        except LoraftError:
            return []

    def lock(self) -> None:
        """Hold this run for this process (released when it exits): a second process training
        or resuming the same folder at the same time is refused."""
        import fcntl

        if getattr(self, "_lock", None) is not None:
            return
        stream = (self.path / LOCK_FILE).open("a")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            stream.close()
            raise LoraftError(f"{self.path}: another loraft process is using this run right now") from None
        self._lock = stream  # kept open: the lock lasts as long as the process holds it

    @contextlib.contextmanager
    def held(self):
        """The run locked for the duration of a `with` block."""
        self.lock()
        try:
            yield self
        finally:
            self.unlock()

    def unlock(self) -> None:
        """Let other processes use the run again (also happens when this process exits)."""
        stream = getattr(self, "_lock", None)
        if stream is not None:
            stream.close()
            self._lock = None

    # --- paths --------------------------------------------------------------------------

    @property
    def recipe_path(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def example_values_path(self) -> Path:
        return self.path / "example_values.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def inputs_path(self) -> Path:
        """The fingerprint of what the run's numbers depend on (`loraft.fingerprint`)."""
        return self.path / "inputs.json"

    @property
    def base_model_path(self) -> Path:
        return self.path / BASE_MODEL

    @property
    def train_state_path(self) -> Path:
        return self.path / TRAIN_STATE

    def checkpoint(self, name: str) -> Path:
        return self.path / "checkpoints" / name

    def saved_checkpoint(self, name: str) -> Path:
        """The complete folder of checkpoint `name`: itself, or its `.old` copy mid-swap."""
        if name not in CHECKPOINT_NAMES:
            raise LoraftError(f"--checkpoint: expected best or last, got '{name}'")
        directory = self.checkpoint(name)
        for candidate in (directory, old_copy(directory)):
            if candidate.is_dir():
                return candidate
        raise LoraftError(f"{directory}: no such checkpoint (the run saved none yet)")

    def output_folder(self, checkpoint: str) -> Path:
        """Where `loraft eval` writes its generations and predictions (never over the run's own)."""
        return self.path / f"eval-{checkpoint}"

    # --- files --------------------------------------------------------------------------

    def write_recipe(self, recipe: Recipe) -> None:
        write_atomically(self.recipe_path, recipe.to_yaml())

    def read_recipe(self, overrides: list[str] | None = None, grants=None) -> Recipe:
        """The run's recipe (with `overrides`). To load and run its model, pass the command
        line's `grants` (`loraft.recipe_files.CodeGrants`): the run's own recipe.yaml never
        allows code to run; None reads it as data only (comparisons, reports)."""
        from loraft.recipe_files import apply_grants, load_recipe

        # other methods' sections dropped: older run folders wrote every method's section
        recipe = load_recipe(self.recipe_path, overrides, other_methods="drop")
        return recipe if grants is None else apply_grants(recipe, grants, self.recipe_path)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record; a line cut short by a kill is ignored."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records up to `last_step` (a resumed run writes the later ones again)."""
        kept = [record for record in self.read_metrics() if record.get("step", 0) <= last_step]
        write_atomically(self.metrics_path, "".join(json.dumps(record) + "\n" for record in kept))

    def write_example_values(self, split: str, step: int, values: dict[str, list]) -> None:
        """Each reported example's values (`Task.example_values`), in the split's order."""
        record = {"split": split, "step": step, "values": values}
        write_atomically(self.example_values_path, json.dumps(record) + "\n")

    def read_example_values(self) -> dict[str, Any] | None:
        """The reported examples' values, or None where the run has none (older runs) or the
        file is not what `write_example_values` writes."""
        try:
            record = json.loads(self.example_values_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        values = record.get("values") if isinstance(record, dict) else None
        if not isinstance(values, dict) or not values:
            return None
        columns = list(values.values())
        if not all(isinstance(c, list) and all(isinstance(v, int | float) for v in c) for c in columns):
            return None
        if len({len(column) for column in columns}) != 1:
            return None
        return record

    def read_generation_values(self) -> dict[str, list] | None:
        """Each scored generation's chrF counts (`chrf_statistics`), from what `generations.jsonl`
        says was scored; None where a row lacks its hypothesis (older runs) or the file is not
        what the run writes."""
        from loraft.text_metrics import chrf_statistics

        try:
            lines = (self.path / GENERATIONS_FILE).read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError):
            return None
        pairs = [(row.get("hypothesis"), row.get("reference")) for row in rows if isinstance(row, dict)]
        texts = [text for pair in pairs for text in pair]
        if not pairs or len(pairs) != len(rows) or not all(isinstance(text, str) for text in texts):
            return None
        hypotheses, references = zip(*pairs, strict=True)
        return {"chrf_stats": chrf_statistics(list(hypotheses), list(references))}

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomically(self.summary_path, json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_path.is_file():
            raise LoraftError(f"{self.path}: the run has not finished (no summary.json)")
        try:
            return json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LoraftError(f"{self.summary_path}: not a loraft summary (invalid JSON)") from None


def refuse_special_folder(path: Path) -> None:
    """A run directory must not be `/`, home, the current folder or one above it, a repository,
    or a folder of runs: with --overwrite, loraft removes its own files there."""
    resolved = path.expanduser().resolve()
    cwd = Path.cwd().resolve()
    reasons = [
        (lambda: resolved == Path(resolved.anchor), "the filesystem root"),
        (lambda: resolved == Path.home().resolve(), "your home folder"),
        (lambda: resolved == cwd or resolved in cwd.parents, "the current folder or one of its parents"),
        (lambda: resolved == (cwd / RUNS_FOLDER).resolve(), "the runs folder"),
        (lambda: (resolved / ".git").exists(), "a repository"),
        (lambda: resolved.is_dir() and _holds_runs(resolved), "a folder of runs"),
        (lambda: any((parent / MARKER).is_file() for parent in resolved.parents), "inside another run"),
    ]
    for refused, what in reasons:
        if refused():
            raise LoraftError(f"output_dir: {path} is {what}; a run needs a folder of its own")


def _holds_runs(folder: Path) -> bool:
    return any((child / MARKER).is_file() for child in folder.iterdir() if child.is_dir())


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def staging_copy(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f"{STAGING_PREFIX}{path.name}")


def old_copy(path: Path) -> Path:
    """Where the previous `path` waits while its replacement is renamed in."""
    return path.with_name(path.name + OLD_SUFFIX)


def state_folder(train_state: Path, step: int) -> Path:
    """The training state after optimizer step `step`."""
    return train_state / f"step-{step:08d}"


def state_step(folder: Path) -> int | None:
    """The step of a training state folder; None for anything else."""
    match = STATE_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def default_run_dir(name: str) -> Path:
    """`runs/<name>`: where a recipe without `output_dir` writes its run."""
    return RUNS_FOLDER / name


def write_atomically(path: Path, text: str) -> None:
    """Write a small file beside its destination, then rename it over: never half-written."""
    staging = staging_copy(path)
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
