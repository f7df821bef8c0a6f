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
    launch = launch or launch_process
    for note in notes:
        report(f"note: {note}")
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
