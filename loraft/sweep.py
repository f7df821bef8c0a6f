"""`loraft sweep`: a grid of overrides, one run each in its own process, then their comparison.

Points are the cartesian product of the `--grid KEY=V1,V2` values, each repeated over
`--seeds N` training seeds (the data stays fixed: `data.seed` is not touched). A combination
that means the same run as another (a LoRA rank with `method=full`) runs once. Re-running the
command skips finished points, resumes unfinished ones from their training state, and restarts
those that never saved one; a point that fails is reported and the others go on.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from loraft.errors import LoraftError
from loraft.recipe_files import NO_GRANTS, CodeGrants, load_recipe
from loraft.run_dir import RunDirectory, write_atomically

SWEEP_LOCK = ".loraft-sweep-lock"

Launch = Callable[[list[str]], tuple[int, str]]  # loraft arguments -> (exit code, last error line)


@dataclass
class SweepPoint:
    name: str
    overrides: list[str]
    status: str = "to run"  # to run, finished, failed, skipped (already finished)
    message: str = ""


def swept_runs(paths: list[Path]) -> list[Path]:
    """Each sweep folder among `paths` (one holding sweep.json, not itself a run) as the runs its
    sweep compares (a tuned sweep's: the chosen values' runs, not every tried one), so that
    several sweeps' folders compare as one; other paths as given."""
    runs = []
    for path in paths:
        record = path / "sweep.json"
        if RunDirectory(path).is_run() or not record.is_file():
            runs.append(path)
            continue
        try:
            names = [point["name"] for point in json.loads(record.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
            raise LoraftError(f"{record}: not a sweep record (a list of named points): {error}") from None
        for name in names:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise LoraftError(f"{record}: point name {name!r} is not a folder name inside the sweep")
            runs.append(path / name)
    return runs


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`["lora.r=1,2,4"]` -> `[("lora.r", ["1", "2", "4"])]`; commas inside [ ] stay in a value."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        parts = _split_top_level(values)
        if not sep or not key.strip() or not all(part.strip() for part in parts):
            raise LoraftError(f"--grid {spec!r}: expected KEY=V1,V2,... e.g. lora.r=1,2,4")
        grid.append((key.strip(), [part.strip() for part in parts]))
    return grid


def sweep_points(
    recipe_path: Path, overrides: list[str], grid: list[tuple[str, list[str]]], seeds: int
) -> tuple[list[SweepPoint], list[str]]:
    """Every distinct run of the grid (validated now), and notes on what was merged."""
    from loraft.methods import other_sections
    from loraft.report import point_key

    # over methods, a point drops the settings of the others (lora.r with method=full)
    other_methods = "drop" if any(key == "method" for key, _ in grid) else "refuse"
    points, seen, notes = [], {}, []
    for values in itertools.product(*(choices for _, choices in grid)):
        given = [f"{key}={value}" for (key, _), value in zip(grid, values, strict=True)]
        recipe = _load(recipe_path, [*overrides, *given], given, other_methods)
        others = tuple(f"{section}." for section in other_sections(recipe.method))
        combination = [c for c in given if not c.startswith(others)]
        fixed = [o for o in overrides if not o.startswith(others)]
        key = point_key(recipe)
        if key in seen:
            dropped = sorted({c.split("=")[0].split(".")[0] + ".*" for c in given if c.startswith(others)})
            verb = "means" if len(dropped) == 1 else "mean"
            notes.append(
                f"{' '.join(given)} is the same run as {seen[key]} ({', '.join(dropped)} {verb} nothing "
                f"for method {recipe.method}): run once"
            )
            continue
        seen[key] = " ".join(given)
        varied = [c for c in combination if not c.startswith("method=")]
        for offset in range(seeds):
            seed = recipe.train.seed + offset
            name = _slug([recipe_path.stem, recipe.method, *varied, f"seed={seed}"])
            points.append(SweepPoint(name, [*fixed, *combination, f"train.seed={seed}"]))
    return points, notes


def run_sweep(
    recipe_path: Path,
    overrides: list[str],
    grid: list[tuple[str, list[str]]],
    seeds: int,
    out: Path,
    data_root: Path | None = None,
    launch: Launch | None = None,
    report: Callable[[str], None] = print,
    grants: CodeGrants = NO_GRANTS,
) -> list[SweepPoint]:
    """Run (or skip, resume, restart) every point into `out/<name>`; sweep.json says how each went."""
    points, notes = sweep_points(recipe_path, overrides, grid, seeds)
    for note in notes:
        report(f"note: {note}")
    return run_points(recipe_path, points, out, data_root, launch, report, grants)


def run_points(
    recipe_path: Path,
    points: list[SweepPoint],
    out: Path,
    data_root: Path | None = None,
    launch: Launch | None = None,
    report: Callable[[str], None] = print,
    grants: CodeGrants = NO_GRANTS,
) -> list[SweepPoint]:
    """`run_sweep`'s loop over points already made."""
    launch = launch or launch_process
    out.mkdir(parents=True, exist_ok=True)
    lock = hold_sweep_lock(out)  # noqa: F841 - held open for the whole sweep
    for index, point in enumerate(points, start=1):
        run = RunDirectory(out / point.name)
        if run.is_finished():
            point.status = "skipped"
            report(f"[{index}/{len(points)}] {point.name}: finished before, skipped")
            continue
        arguments = [
            "train",
            str(recipe_path),
            *point.overrides,
            f"name={point.name}",
            f"output_dir={run.path}",
            "train.resume=auto",
            *(["--data-root", str(data_root)] if data_root else []),
            *grant_flags(grants),
        ]
        wait_until_free(run)
        started = time.perf_counter()
        code, message = launch(arguments)
        point.status, point.message = ("finished", "") if code == 0 else ("failed", message)
        report(
            f"[{index}/{len(points)}] {point.name}: {point.status} in {time.perf_counter() - started:.0f} s"
            + (f": {message}" if message else "")
        )
        write_atomically(out / "sweep.json", json.dumps([asdict(p) for p in points], indent=2) + "\n")
    write_atomically(out / "sweep.json", json.dumps([asdict(p) for p in points], indent=2) + "\n")
    return points


@dataclass
class TunedPoint:
    """A grid point's tuning: each tried value's validation metric, and the chosen one."""

    combination: str  # the grid values, as overrides ("" for a grid of one point)
    keys: list[str]  # the tuned keys
    tried: list[list[str]]  # the values tried, one list (a value per key) a run
    scores: list[float | None]  # each tried run's best validation metric (None: it failed)
    chosen: list[str] | None
    metric: str

    def describe(self) -> str:
        return " ".join(f"{key}={value}" for key, value in zip(self.keys, self.chosen or [], strict=False))

    def edges(self) -> list[str]:
        """Where the chosen value is the lowest or highest of three or more numbers tried, as
        "the highest train.lr": the best may lie beyond the grid."""
        found = []
        for index, key in enumerate(self.keys):
            try:
                tried = sorted({float(values[index]) for values in self.tried})
                chosen = float(self.chosen[index]) if self.chosen else None
            except ValueError:
                continue
            if len(tried) >= 3 and chosen in (tried[0], tried[-1]):
                found.append(f"the {'lowest' if chosen == tried[0] else 'highest'} {key} tried")
        return found


def run_tuned_sweep(
    recipe_path: Path,
    overrides: list[str],
    grid: list[tuple[str, list[str]]],
    tune: list[tuple[str, list[str]]],
    seeds: int,
    out: Path,
    data_root: Path | None = None,
    launch: Launch | None = None,
    report: Callable[[str], None] = print,
    grants: CodeGrants = NO_GRANTS,
    metric: str | None = None,
) -> tuple[list[SweepPoint], list[TunedPoint]]:
    """Every grid point at every tuned value, one run each (the recipe's seed); per point the
    value whose best checkpoint scores best on the validation split; then `seeds` runs at
    that value, the first being its tuning run (the same run: skipped as finished). Returns the
    final points (what is compared) and the tuning of each point."""
    check_tunable(recipe_path, overrides, grid, tune)
    groups: list[tuple[str, list[SweepPoint]]] = []  # a grid combination -> its tuning runs
    tuning: dict[str, SweepPoint] = {}
    for values in itertools.product(*(choices for _, choices in grid)):
        combination = [(key, [value]) for (key, _), value in zip(grid, values, strict=True)]
        points, _ = sweep_points(recipe_path, overrides, combination + tune, 1)
        if any(points == other for _, other in groups):  # the same runs (lora.r with method=full)
            continue
        groups.append((" ".join(f"{key}={value[0]}" for key, value in combination), points))
        tuning.update((point.name, point) for point in points)
    report(f"tuning {' and '.join(key for key, _ in tune)}: {len(tuning)} runs, one seed each")
    run_points(recipe_path, list(tuning.values()), out, data_root, launch, report, grants)
    tuned = [choose_value(combination, points, tune, out, metric) for combination, points in groups]
    final: dict[str, SweepPoint] = {}
    for (combination, _), choice in zip(groups, tuned, strict=True):
        if choice.chosen is None:
            report(f"{combination or recipe_path.stem}: every tuning run failed; left out")
            continue
        edge = "; ".join(choice.edges())
        report(
            f"{combination or recipe_path.stem}: {choice.describe()} (the best validation {choice.metric}"
            + (f"; {edge}: the best may lie beyond, widen the grid)" if edge else ")")
        )
        chosen = [(key, [value]) for key, value in zip(choice.keys, choice.chosen, strict=True)]
        fixed = [(key, [value]) for key, value in (part.split("=", 1) for part in combination.split())]
        points, _ = sweep_points(recipe_path, overrides, fixed + chosen, seeds)
        final.update((point.name, point) for point in points)
    points = run_points(recipe_path, list(final.values()), out, data_root, launch, report, grants)
    write_atomically(out / "tuning.json", json.dumps([asdict(choice) for choice in tuned], indent=2) + "\n")
    return points, tuned


def check_tunable(
    recipe_path: Path,
    overrides: list[str],
    grid: list[tuple[str, list[str]]],
    tune: list[tuple[str, list[str]]],
) -> None:
    """Tuning picks on the validation split, and a tuned key is not also a grid key."""
    shared = set(_keys(grid)) & set(_keys(tune))
    if shared:
        raise LoraftError(f"--tune {sorted(shared)[0]}: also a --grid key; tune it or grid it, not both")
    for key, values in tune:
        for value in values:
            try:
                recipe = load_recipe(recipe_path, [*overrides, f"{key}={value}"])
            except LoraftError as error:
                raise LoraftError(f"--tune {key}={value}: {error}") from None
    if recipe.data.validation_fraction is None:
        raise LoraftError(
            "--tune: needs data.validation_fraction (a validation split held out of data.train): tuned on "
            "the eval split, the reported figures would be the ones the values were picked on"
        )


def choose_value(
    combination: str,
    points: list[SweepPoint],
    tune: list[tuple[str, list[str]]],
    out: Path,
    metric: str | None,
) -> TunedPoint:
    """The tried values whose run's best validation metric is best (lowest for a loss)."""
    keys = _keys(tune)
    tried, scores, name = [], [], metric
    for point in points:
        given = dict(o.split("=", 1) for o in point.overrides)
        tried.append([given[key] for key in keys])
        run = RunDirectory(out / point.name)
        summary = run.read_summary() if run.is_finished() else {}
        name = name or summary.get("best_metric")
        value = summary.get("best_eval", {}).get(name or "eval_loss")
        scores.append(value if isinstance(value, int | float) else None)
    name = name or "eval_loss"
    scored = [index for index, score in enumerate(scores) if score is not None]
    sign = 1 if name.endswith(("loss", "perplexity")) else -1
    best = min(scored, key=lambda index: sign * scores[index]) if scored else None
    return TunedPoint(combination, keys, tried, scores, None if best is None else tried[best], name)


def _keys(axes: list[tuple[str, list[str]]]) -> list[str]:
    return [key for key, _ in axes]


def plan_points(recipe_path: Path, points: list[SweepPoint]) -> list[dict]:
    """`--dry-run`: each point's trainable parameters and memory estimate, from `loraft plan`."""
    from loraft.plan import plan_recipe

    planned = []
    for point in points:
        plan = plan_recipe(load_recipe(recipe_path, point.overrides))
        planned.append(
            {
                "name": point.name,
                "trainable_params": plan["trainable_params"],
                "trainable_pct": plan["trainable_pct"],
                "memory_mb": plan["memory_mb"]["total"],
            }
        )
    return planned


def grant_flags(grants: CodeGrants) -> list[str]:
    """The command-line flags that grant each child what the sweep's own command line granted."""
    return [
        *(["--trust-remote-code"] if grants.trust_remote_code else []),
        *(["--allow-local-metric-code"] if grants.local_metric_code else []),
    ]


def launch_process(arguments: list[str]) -> tuple[int, str]:
    """`python -m loraft ARGUMENTS` in its own process: a crash stays there, and a sweep that is
    killed takes its child with it (SIGTERM: the child saves its state, the next sweep resumes)."""
    command = [sys.executable, "-m", "loraft", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=die_with_parent)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "%|" not in line]
    return done.returncode, lines[-1].strip().removeprefix("error: ") if done.returncode and lines else ""


def die_with_parent() -> None:
    """In the child, before it starts: Linux sends it SIGTERM when the sweep's process dies."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the child outlives a killed sweep
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_until_free(run: RunDirectory, seconds: float = 60) -> None:
    """A killed sweep's child may still be saving its state (it got SIGTERM): let it finish
    before this sweep resumes the point, instead of failing it as busy."""
    deadline = time.monotonic() + seconds
    while run.is_run():
        try:
            with run.held():
                return
        except LoraftError:
            if time.monotonic() > deadline:
                return  # still busy: the child's own one-line refusal says so
            time.sleep(0.5)


def hold_sweep_lock(out: Path):
    """One sweep at a time in a folder (released when the process exits, however it exits)."""
    import fcntl

    stream = (out / SWEEP_LOCK).open("a")
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        stream.close()
        raise LoraftError(
            f"--out: another loraft sweep is running in {out}; wait for it, or use another --out"
        ) from None
    return stream


def _load(recipe_path: Path, overrides: list[str], combination: list[str], other_methods: str):
    try:
        return load_recipe(recipe_path, overrides, other_methods)
    except LoraftError as error:
        raise LoraftError(f"--grid {' '.join(combination)}: {error}") from None


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for character in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(character, 0)
        if character == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += character
    return [*parts, current]


def _slug(parts: list[str]) -> str:
    """A run name (letters, digits, . _ -) that says what the point is: `news_r-8_seed-42`."""
    words = []
    for part in parts:
        key, sep, value = part.partition("=")
        word = f"{key.split('.')[-1]}-{value}" if sep else part
        words.append(re.sub(r"[^A-Za-z0-9.-]+", "_", word).strip("_"))
    return "_".join(words)
