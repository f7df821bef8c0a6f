"""`loraft compare`: finished runs side by side, seeds of one setting grouped, against full fine-tuning.

A *point* is a run's recipe without its seed, name and folder: runs of one point are grouped
and reported as mean and standard deviation. Runs that cannot be compared with the others
(unfinished, another task or evaluation set, without the chosen metric) are named and left out.
"""

from __future__ import annotations

import csv
import math
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraft import statistics as bootstrap
from loraft.errors import LoraftError
from loraft.methods import method_of, other_sections
from loraft.recipe import Recipe, flatten
from loraft.run_dir import RunDirectory
from loraft.statistics import Interval

# What makes two runs comparable: the same task, scored on the same examples.
EVAL_SET_KEYS = (
    "task", "data.train", "data.eval", "data.eval_size", "data.eval_fraction", "data.validation_fraction",
    "data.seed",
)  # fmt: skip
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
    examples: list[dict[str, Any] | None] = field(default_factory=list)  # each run's example values
    train_size: int | None = None  # data.train_size: the x of a learning curve
    method_label: str = ""  # the label before `_tell_apart` adds the settings that differ
    interval: Interval | None = None  # of the metric, over examples and seeds (`confide`)
    versus_full: Interval | None = None  # of the paired difference from full fine-tuning

    def example_values(self) -> list[dict[str, Any]] | None:
        """Every run's example values (as arrays), or None if a run kept none."""
        if not self.examples or any(values is None for values in self.examples):
            return None
        return [bootstrap.as_arrays(values) for values in self.examples]

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
    kind: str = "causal_lm"  # the task's: what a loss is per (token, or example)

    @property
    def greater_is_better(self) -> bool:
        return not self.metric.endswith(("loss", "perplexity"))

    @property
    def full(self) -> Point | None:
        """The full fine-tuning point the others are measured against, if there is one: on a
        learning-curve grid, the one trained on the most examples."""
        baselines = [point for point in self.points if point.baseline]
        return max(baselines, key=lambda p: math.inf if p.train_size is None else p.train_size, default=None)

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
    identities = [run_identity(run, recipe) for run, recipe, _ in loaded]
    reference = {part: _most_common([identity[part] for identity in identities]) for part in identities[0]}
    metric = metric or loaded[0][2].get("best_metric", "eval_loss")
    points: dict[str, Point] = {}
    for (run, recipe, summary), identity in zip(loaded, identities, strict=True):
        differing = [part for part, value in identity.items() if value != reference[part]]
        if differing:
            shown = _shown(identity, differing[0], recipe.model.name)
            left_out.append(f"{run.path}: {differing[0]} differs from the other runs' ({shown})")
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
                train_size=recipe.data.train_size,
                method_label=method.label(recipe),
            )
        points[key].runs.append(row)
        if metric == "gen_chrf":  # scored on the generations, not on the loss's examples
            points[key].examples.append(run.read_generation_values())
        else:
            record = run.read_example_values()
            points[key].examples.append(record["values"] if record else None)
    ordered = sorted(
        points.values(),
        key=lambda p: (p.line is not None, p.line or "", p.runs[0]["rank"] or 0),
    )
    sizes = {point.train_size for point in ordered}
    if len(sizes) > 1:  # a learning-curve grid: a frontier line is one method at one training size
        for point in ordered:
            point.line = point.line and f"{point.line}, {_size(point.train_size)} examples"
    _tell_apart(ordered)
    kinds = {recipe.task_kind for _, recipe, _ in loaded}
    comparison = Comparison(metric, ordered, left_out, kinds.pop() if len(kinds) == 1 else "causal_lm")
    confide(comparison)
    return comparison


def confide(comparison: Comparison) -> None:
    """Each point's interval and, where there is a full fine-tuning point scored on the same
    examples, its paired difference from it (`loraft.statistics`): one example draw for all."""
    if comparison.metric not in bootstrap.METRICS:
        return
    full = comparison.full
    baseline = full.example_values() if full else None
    for point in comparison.points:
        values = point.example_values()
        if values is None:
            continue
        count = len(next(iter(values[0].values())))
        if any(len(next(iter(run.values()))) != count for run in values):
            continue
        weights = bootstrap.example_weights(count, bootstrap.DRAWS)
        point.interval = bootstrap.point_interval(values, comparison.metric, weights)
        paired = baseline is not None and all(len(next(iter(run.values()))) == count for run in baseline)
        if paired and point is not full:
            point.versus_full = bootstrap.paired_difference(values, baseline, comparison.metric, weights)


def _size(train_size: int | None) -> str:
    return "all" if train_size is None else f"{train_size:,}"


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
    """A run's figures, its selected checkpoint's metrics (on the test split where the run held
    out a validation split, else on the eval split it was selected on), and what it was."""
    split = "test" if "test_eval" in summary else "eval"
    reported = summary.get(f"{split}_eval" if split == "test" else "best_eval", {})
    metrics = {k: v for k, v in reported.items() if isinstance(v, int | float) and k != "step"}
    return {
        "run": str(run.path),
        "split": split,
        "machine": summary.get("machine"),
        "seed": recipe.train.seed,
        "rank": None,
        "targets": None,
        **method_of(recipe).settings(recipe),
        "train_examples": summary.get("train_examples"),
        "retain_loss_change": (summary.get("retain") or {}).get("loss_change"),
        **{key: summary[key] for key in FIGURES},
        **metrics,
    }


def _eval_set(recipe: Recipe) -> tuple:
    flat = _flat(recipe)
    return tuple(flat.get(key) for key in EVAL_SET_KEYS)


def run_identity(run: RunDirectory, recipe: Recipe) -> dict[str, tuple]:
    """What must be the same for two runs' figures to compare: the task and its splits, the
    base model (its name, and its weights' SHA-256 where the run fingerprinted them) and the
    contents of the data files (`inputs.json`)."""
    from loraft.fingerprint import read_fingerprint

    try:
        prints = read_fingerprint(run.inputs_path) or {}
    except LoraftError:
        prints = {}
    model = recipe.model
    weights = (
        ()
        if model.config is not None
        else tuple(  # a scratch base is each run's own init
            sorted(
                (name, value.get("sha256"))
                for name, value in prints.items()
                if name.startswith("model/")
                and name.endswith((".safetensors", ".bin"))
                and isinstance(value, dict)
            )
        )
    )
    scratch = (repr(model.config), model.tokenizer_vocab_size) if model.config is not None else ()
    data = tuple(
        sorted(
            (name, value.get("sha256"))
            for name, value in prints.items()
            if name.startswith("data.") and isinstance(value, dict)
        )
    )
    named = () if weights else (model.name, model.revision)  # the same weights elsewhere are the same base
    return {
        "the task or its evaluation split": _eval_set(recipe),
        "the base model": (*named, model.quantize, *scratch, weights),
        "the data files' contents": data,
    }


def _shown(identity: dict[str, tuple], part: str, name: str | None) -> str:
    """A short form of the part that differs, for the left-out line."""
    value = identity[part]
    if part == "the base model":
        return f"{name or 'scratch'}" + (f", weights {value[-1][0][1][:12]}" if value[-1] else "")
    return ", ".join(str(item) for item in value[:3])[:80]


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


# --- the recommendation ---------------------------------------------------------------------


def margin_of(comparison: Comparison, margin: str | None) -> tuple[float, str]:
    """How far from full fine-tuning still counts as as good, in the metric's units, and its
    wording: `--margin` as a number (the metric's units) or a percentage of full's value; by
    default 1 point (0.01 of a 0-1 score, 1 of a 0-100 score), or 2% of full's value for a loss."""
    full_value = abs(comparison.full.mean(comparison.metric))
    if margin is None:
        if not comparison.greater_is_better:
            margin = "2%"
        else:
            point = 0.01 if full_value <= 1 else 1.0
            return point, f"1 point ({point:g})"
    text = margin.strip()
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise LoraftError(f"--margin: expected a number or a percentage such as 2%, got '{margin}'") from None
    if not math.isfinite(value) or value < 0:
        raise LoraftError(f"--margin: expected a margin of 0 or more, got '{margin}'")
    if text.endswith("%"):
        return (
            value / 100 * full_value,
            f"{value:g}% of full's {comparison.metric} ({value / 100 * full_value:.4g})",
        )
    return value, f"{value:g}"


def recommendation(comparison: Comparison, margin: str | None = None) -> str:
    """The cheapest point (trainable parameters, then peak memory) whose paired difference from
    full fine-tuning is, at 95% confidence, no worse than the margin; or why there is none."""
    full = comparison.full
    if full is None:
        return "recommendation: none: no full fine-tuning run among these to measure against"
    if comparison.metric not in bootstrap.METRICS:
        return (
            f"recommendation: none: {comparison.metric} has no interval (only {', '.join(bootstrap.METRICS)})"
        )
    tolerance, wording = margin_of(comparison, margin)
    sign = 1 if comparison.greater_is_better else -1
    if all(point.baseline for point in comparison.points):
        return "recommendation: none: only full fine-tuning among these, nothing to recommend instead"
    # full fine-tuning on fewer examples (a learning curve) is no method to recommend instead
    candidates = [point for point in comparison.points if point.versus_full and not point.baseline]
    if not candidates:
        return "recommendation: none: no point has per-example values paired with full fine-tuning's"

    def worst_case(point: Point) -> float:  # how much worse than full it may be (negative: better)
        difference = point.versus_full
        return -sign * (difference.low if sign > 0 else difference.high)

    qualifying = [point for point in candidates if worst_case(point) <= tolerance]
    if not qualifying:
        closest = min(candidates, key=worst_case)
        return (
            f"recommendation: none: no point is within {wording} of full fine-tuning at 95% confidence; "
            f"the closest, {closest.label}, may be {worst_case(closest):.4g} worse "
            f"({worst_case(closest) - tolerance:.4g} beyond the margin)"
        )
    cheapest = min(qualifying, key=lambda p: (p.mean("trainable_params"), p.mean("peak_memory_mb") or 0))
    difference = cheapest.versus_full
    ratios = [
        f"{comparison.ratio(cheapest, key):.3g}x full's {name}"
        for key, name in (
            ("trainable_params", "trainable parameters"),
            ("peak_memory_mb", "peak memory"),
            ("train_tokens_per_s", "tokens/s"),
        )  # fmt: skip
        if comparison.ratio(cheapest, key) is not None
    ]
    return (
        f"recommendation: {cheapest.label}: within {wording} of full fine-tuning at 95% confidence "
        f"({comparison.metric} {difference.estimate:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}] "
        f"vs full); {', '.join(ratios)}"
    )


# --- tables -------------------------------------------------------------------------------


def table_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per point: means, standard deviations, and ratios to full fine-tuning."""
    rows = []
    metric = comparison.metric
    for point in comparison.points:
        # only the point measured against is "baseline": full fine-tuning on fewer examples
        # (a learning curve) gets its difference from it like any other point
        baseline = point is comparison.full
        row: dict[str, Any] = {"point": point.label, "runs": len(point.runs), "baseline": baseline}
        for key in FIGURES:
            row[key] = point.mean(key)
        row["trainable_params"] = round(row["trainable_params"])  # the same in every seed
        row[metric] = point.mean(metric)
        row[f"{metric}_std"] = point.std(metric)
        for key in ("trainable_params", "wall_s", "train_tokens_per_s", "peak_memory_mb"):
            row[f"{key}_vs_full"] = comparison.ratio(point, key)
        row[f"{metric}_minus_full"] = comparison.difference(point)
        row["retain_loss_change"] = point.mean("retain_loss_change")
        interval, versus = point.interval, point.versus_full
        row[f"{metric}_low"], row[f"{metric}_high"] = (
            (interval.low, interval.high) if interval else (None, None)
        )
        row[f"{metric}_minus_full_low"], row[f"{metric}_minus_full_high"] = (
            (versus.low, versus.high) if versus else (None, None)
        )
        row["indistinguishable_from_full"] = versus.contains(0.0) if versus else None
        rows.append(row)
    return rows


def format_comparison(comparison: Comparison, margin: str | None = None) -> str:
    """The recommendation, then a plain-text table under 100 columns (comparison.csv and .md
    hold every figure): each point's metric with its 95% interval, and its paired difference
    from full fine-tuning with that difference's interval, `=` where it contains zero."""
    metric = comparison.metric.removeprefix("eval_")
    header = ["point", "runs", "trainable %", "peak MB", f"{metric} [95%]", "vs full [95%]"]
    lines = [header]
    for row in table_rows(comparison):
        lines.append(
            [
                row["point"][:28],
                str(row["runs"]),
                f"{row['trainable_pct']:.4f}",
                f"{row['peak_memory_mb']:,.0f}",
                _metric_cell(row, comparison.metric),
                _versus_cell(row, comparison.metric),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    wrapped = [
        textwrap.fill(line, 100, subsequent_indent="  ") for line in [recommendation(comparison, margin)]
    ]
    notes = [textwrap.fill(note, 100, subsequent_indent="  ") for note in _notes(comparison)]
    return "\n".join([*wrapped, "", *text, *notes])


def _metric_cell(row: dict, metric: str) -> str:
    """`0.431 [0.410, 0.452]`; without per-example values, the mean (± sd over seeds)."""
    if row[f"{metric}_low"] is None:
        return _with_spread(row[metric], row[f"{metric}_std"], row["runs"])
    return f"{row[metric]:.3f} [{row[f'{metric}_low']:.3f}, {row[f'{metric}_high']:.3f}]"


def _versus_cell(row: dict, metric: str) -> str:
    """`-0.012 [-0.030, +0.005] =`: the paired difference from full, `=` if its interval holds 0."""
    difference = row[f"{metric}_minus_full"]
    if difference is None:
        return ""
    if row["baseline"]:
        return "baseline"
    if row[f"{metric}_minus_full_low"] is None:
        return f"{difference:+.4f}"
    low, high = row[f"{metric}_minus_full_low"], row[f"{metric}_minus_full_high"]
    same = " =" if row["indistinguishable_from_full"] else "  "
    return f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]{same}"


def _with_spread(value: float, spread: float, runs: int) -> str:
    """`0.4312 ± 0.0120` over several seeds; a single run has no spread to show."""
    return f"{value:.4f} ± {spread:.4f}" if runs > 1 else f"{value:.4f}"


def _notes(comparison: Comparison) -> list[str]:
    notes = [split_note(comparison), *(f"left out: {reason}" for reason in comparison.left_out)]
    notes += machine_notes(comparison)
    if any(point.interval for point in comparison.points):
        notes.append(f"[95%]: bootstrap over the examples and the seeds ({bootstrap.DRAWS:,} draws)")
        notes.append(
            "vs full: paired on the same examples; =: indistinguishable from full (its interval holds 0)"
        )
    if comparison.full is None:
        notes.append("no full fine-tuning run among these: nothing to measure 'vs full' against")
    return notes


BUSY = 1.25  # a 5-minute load above this many times the cores: other work shared the machine


def machine_notes(comparison: Comparison) -> list[str]:
    """Where the resource figures (tokens/s, times, memory) come from different machines, or
    from a busy one, so that their ratios are not measurements of the methods alone."""
    runs = [run for point in comparison.points for run in point.runs]
    machines = {(m["cpu"], m.get("gpu"), m["cores"]) for run in runs if (m := run.get("machine"))}
    notes = []
    if len(machines) > 1:
        named = "; ".join(
            f"{cpu}{f' + {gpu}' if gpu else ''}, {cores} cores"
            for cpu, gpu, cores in sorted(machines, key=str)
        )
        notes.append(
            f"resource figures come from {len(machines)} machines ({named}): ratios are not measurements"
        )
    busy = [
        f"{Path(run['run']).name} (load {m['load_average'][1]:.1f} on {m['cores']} cores)"
        for run in runs
        if (m := run.get("machine")) and m.get("load_average") and m["load_average"][1] > BUSY * m["cores"]
    ]
    if busy:
        notes.append(
            f"trained on a busy machine, so slower than alone: {', '.join(busy[:4])}"
            + (" ..." if len(busy) > 4 else "")
        )
    unknown = sum(1 for run in runs if not run.get("machine"))
    if unknown and machines:
        notes.append(
            f"{unknown} run(s) recorded no machine (older loraft): their resource figures may not compare"
        )
    return notes


def split_note(comparison: Comparison) -> str:
    """Which split the figures come from, and whether it also chose the checkpoints (one split:
    `data.validation_fraction` is part of what makes runs comparable)."""
    if all(run["split"] == "test" for point in comparison.points for run in point.runs):
        return "figures: the test split, scored once with the checkpoint selected on the validation split"
    return (
        "figures: the eval split, which also selected the checkpoints, so they are optimistic "
        "(data.validation_fraction holds a validation split out)"
    )


def write_tables(comparison: Comparison, out: Path, margin: str | None = None) -> list[Path]:
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
        "95% interval",
        "vs full [95%]",
        "params vs full",
        "time vs full",
        "tokens/s vs full",
        "memory vs full",
    ]
    forgetting = any(row["retain_loss_change"] is not None for row in rows)
    header += ["retain loss change"] if forgetting else []
    lines = [recommendation(comparison, margin), ""]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
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
            ""
            if row[f"{metric}_low"] is None
            else f"[{row[f'{metric}_low']:.4f}, {row[f'{metric}_high']:.4f}]",
            _versus_cell(row, metric).strip() if difference is not None else "",
            *("" if row[f"{k}_vs_full"] is None else f"{row[f'{k}_vs_full']:.3g}x" for k in ratio_keys),
        ]
        if forgetting:
            change = row["retain_loss_change"]
            cells.append("" if change is None else f"{change:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(note[0].upper() + note[1:] for note in _notes(comparison))]
    (out / "comparison.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [out / "comparison.csv", out / "comparison.md"]


def write_tuning(tuned: list, out: Path, image_format: str = "png") -> list[Path]:
    """`tuning.md`: each point's tried values with their validation metric, the chosen one in
    bold; and, for one numeric tuned key, `tuning.<format>`: the validation curves."""
    lines = ["| point | " + " | ".join(["tuned", "validation metric", "chosen"]) + " |", "|---|---|---:|---|"]
    for choice in tuned:
        for values, score in zip(choice.tried, choice.scores, strict=True):
            setting = " ".join(f"{key}={value}" for key, value in zip(choice.keys, values, strict=True))
            edge = "; ".join(choice.edges())
            mark = ("**yes**" + (f" ({edge})" if edge else "")) if values == choice.chosen else ""
            shown = "failed" if score is None else f"{score:.4f}"
            lines.append(
                f"| {choice.combination or 'the recipe'} | {setting} | {shown} ({choice.metric}) | {mark} |"
            )
    (out / "tuning.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    written = [out / "tuning.md"]
    from loraft.plots import tuning_figure

    figure = tuning_figure(tuned, out / f"tuning.{image_format}")
    return written + ([figure] if figure else [])
