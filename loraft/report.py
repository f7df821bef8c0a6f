"""`loraft compare`: finished runs side by side, seeds of one setting grouped, against full fine-tuning.

A *point* is a run's recipe without its seed, name and folder: runs of one point are grouped
and reported as mean and standard deviation. Runs that cannot be compared with the others
(unfinished, another task or evaluation set, without the chosen metric) are named and left out.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraft.errors import LoraftError
from loraft.methods import method_of, other_sections
from loraft.recipe import Recipe, flatten
from loraft.run_dir import RunDirectory

# What makes two runs comparable: the same task, scored on the same examples.
EVAL_SET_KEYS = ("task", "data.train", "data.eval", "data.eval_size", "data.eval_fraction", "data.seed")
# What does not make another point: the seed, and where and under which name the run lives.
SEED_KEYS = ("name", "output_dir", "description", "train.seed", "train.resume")
# Summary figures reported for every point, with their titles.
FIGURES = {
    "trainable_params": "trainable",
    "trainable_pct": "trainable %",
    "wall_s": "wall s",
    "train_tokens_per_s": "tokens/s",
    "peak_memory_mb": "peak MB",
}


@dataclass
class Point:
    """The runs of one setting (its seeds) and their figures."""

    label: str
    method: str
    baseline: bool = False  # full fine-tuning: what every other point is measured against
    line: str | None = None  # the frontier line it lies on (a method's ranks on one set of targets)
    runs: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the flat recipe, seed keys left out

    def values(self, key: str) -> list[float]:
        return [run[key] for run in self.runs if isinstance(run.get(key), int | float)]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float:
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Comparison:
    metric: str
    points: list[Point]
    left_out: list[str]

    @property
    def full(self) -> Point | None:
        """The full fine-tuning point the others are measured against, if there is one."""
        return next((point for point in self.points if point.baseline), None)

    def ratio(self, point: Point, key: str) -> float | None:
        full = self.full
        if full is None or not full.mean(key) or point.mean(key) is None:
            return None
        return point.mean(key) / full.mean(key)

    def difference(self, point: Point) -> float | None:
        full = self.full
        if full is None or point.mean(self.metric) is None:
            return None
        return point.mean(self.metric) - full.mean(self.metric)


def compare_runs(run_dirs: list[str | Path], metric: str | None = None) -> Comparison:
    """Read every run, leave out the ones that cannot be compared, group seeds into points."""
    loaded, left_out = [], []
    for run_dir in run_dirs:
        run = RunDirectory(run_dir)
        if not run.is_run():
            left_out.append(f"{run_dir}: not a loraft run")
        elif not run.is_finished():
            left_out.append(f"{run_dir}: unfinished (no summary.json)")
        else:
            loaded.append((run, run.read_recipe(), run.read_summary()))
    if not loaded:
        raise LoraftError("compare: no finished run to compare; " + "; ".join(left_out))
    reference = _most_common([_eval_set(recipe) for _, recipe, _ in loaded])
    metric = metric or loaded[0][2].get("best_metric", "eval_loss")
    points: dict[str, Point] = {}
    for run, recipe, summary in loaded:
        if _eval_set(recipe) != reference:
            left_out.append(f"{run.path}: another task or evaluation set ({_eval_set(recipe)[:3]})")
            continue
        row = run_row(run, recipe, summary)
        if metric not in row:
            left_out.append(f"{run.path}: has no {metric}")
            continue
        key = point_key(recipe)
        if key not in points:
            method = method_of(recipe)
            points[key] = Point(
                method.label(recipe),
                recipe.method,
                baseline=method.is_baseline,
                line=method.frontier_line(recipe),
                settings=_settings(recipe),
            )
        points[key].runs.append(row)
    ordered = sorted(
        points.values(),
        key=lambda p: (p.line is not None, p.line or "", p.runs[0]["rank"] or 0),
    )
    _tell_apart(ordered)
    return Comparison(metric, ordered, left_out)


def _tell_apart(points: list[Point]) -> None:
    """Points that share a label get the settings that differ between them added to it."""
    for label in {point.label for point in points}:
        alike = [point for point in points if point.label == label]
        if len(alike) < 2:
            continue
        keys = sorted({k for p in alike for k in p.settings if p.settings.get(k) != alike[0].settings.get(k)})
        for point in alike:
            point.label += " " + " ".join(f"{key}={point.settings.get(key)}" for key in keys[:2])


def run_row(run: RunDirectory, recipe: Recipe, summary: dict) -> dict[str, Any]:
    """A run's figures, its best-checkpoint metrics, and what it was."""
    metrics = {
        k: v for k, v in summary.get("best_eval", {}).items() if isinstance(v, int | float) and k != "step"
    }
    return {
        "run": str(run.path),
        "seed": recipe.train.seed,
        "rank": None,
        "targets": None,
        **method_of(recipe).settings(recipe),
        **{key: summary[key] for key in FIGURES},
        **metrics,
    }


def _eval_set(recipe: Recipe) -> tuple:
    flat = _flat(recipe)
    return tuple(flat.get(key) for key in EVAL_SET_KEYS)


def _settings(recipe: Recipe) -> dict[str, Any]:
    """What a point is: the flat recipe without seed keys, and without the settings sections of
    other methods (a rank means nothing without adapters)."""
    others = tuple(f"{section}." for section in other_sections(recipe.method))
    flat = _flat(recipe)
    return {k: v for k, v in flat.items() if k not in SEED_KEYS and not k.startswith(others)}


def point_key(recipe: Recipe) -> str:
    """What identifies a point: two recipes with the same key are seeds of one setting."""
    return repr(sorted((k, repr(v)) for k, v in _settings(recipe).items()))


def _flat(recipe: Recipe) -> dict[str, Any]:
    return flatten(recipe.model_dump(mode="json"))


def _most_common(keys: list[tuple]) -> tuple:
    """The key most runs share; on a tie, the first run's."""
    return max(keys, key=keys.count)


# --- tables -------------------------------------------------------------------------------


def table_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per point: means, standard deviations, and ratios to full fine-tuning."""
    rows = []
    metric = comparison.metric
    for point in comparison.points:
        row: dict[str, Any] = {"point": point.label, "runs": len(point.runs)}
        for key in FIGURES:
            row[key] = point.mean(key)
        row["trainable_params"] = round(row["trainable_params"])  # the same in every seed
        row[metric] = point.mean(metric)
        row[f"{metric}_std"] = point.std(metric)
        for key in ("trainable_params", "wall_s", "train_tokens_per_s", "peak_memory_mb"):
            row[f"{key}_vs_full"] = comparison.ratio(point, key)
        row[f"{metric}_minus_full"] = comparison.difference(point)
        rows.append(row)
    return rows


def format_comparison(comparison: Comparison) -> str:
    """A plain-text table under 100 columns (comparison.csv and .md hold every figure)."""
    metric = comparison.metric.removeprefix("eval_")
    header = ["point", "runs", "trainable %", "tokens/s", "peak MB", "wall s", metric, "vs full"]
    lines = [header]
    for row in table_rows(comparison):
        value, spread = row[comparison.metric], row[f"{comparison.metric}_std"]
        difference = row[f"{comparison.metric}_minus_full"]
        lines.append(
            [
                row["point"][:28],
                str(row["runs"]),
                f"{row['trainable_pct']:.4f}",
                f"{row['train_tokens_per_s']:,.0f}",
                f"{row['peak_memory_mb']:,.0f}",
                f"{row['wall_s']:.1f}",
                _with_spread(value, spread, row["runs"]),
                "" if difference is None else f"{difference:+.4f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    return "\n".join(text + _notes(comparison))


def _with_spread(value: float, spread: float, runs: int) -> str:
    """`0.4312 ± 0.0120` over several seeds; a single run has no spread to show."""
    return f"{value:.4f} ± {spread:.4f}" if runs > 1 else f"{value:.4f}"


def _notes(comparison: Comparison) -> list[str]:
    notes = [f"left out: {reason}" for reason in comparison.left_out]
    if comparison.full is None:
        notes.append("no full fine-tuning run among these: nothing to measure 'vs full' against")
    return notes


def write_tables(comparison: Comparison, out: Path) -> list[Path]:
    """`comparison.csv` (every figure of every point) and `comparison.md` (the readable table)."""
    rows = table_rows(comparison)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "comparison.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metric = comparison.metric
    ratio_keys = ("trainable_params", "wall_s", "train_tokens_per_s", "peak_memory_mb")
    header = [
        "point",
        "runs",
        "trainable params",
        "trainable %",
        "tokens/s",
        "peak MB",
        "wall s",
        metric,
        "vs full",
        "params vs full",
        "time vs full",
        "tokens/s vs full",
        "memory vs full",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        difference = row[f"{metric}_minus_full"]
        cells = [
            row["point"],
            str(row["runs"]),
            f"{row['trainable_params']:,.0f}",
            f"{row['trainable_pct']:.4f}",
            f"{row['train_tokens_per_s']:,.0f}",
            f"{row['peak_memory_mb']:,.0f}",
            f"{row['wall_s']:.1f}",
            _with_spread(row[metric], row[f"{metric}_std"], row["runs"]),
            "" if difference is None else f"{difference:+.4f}",
            *("" if row[f"{k}_vs_full"] is None else f"{row[f'{k}_vs_full']:.3g}x" for k in ratio_keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(note[0].upper() + note[1:] for note in _notes(comparison))]
    (out / "comparison.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [out / "comparison.csv", out / "comparison.md"]
