"""Figures of a comparison, each readable alone: the LoRA frontier, eval-loss curves, resources."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from loraft.errors import LoraftError
from loraft.report import Comparison

FORMATS = ("png", "svg", "pdf")
# Axis names of the usual metrics, with their units; any other metric shows its key.
METRIC_LABELS = {
    "eval_loss": "loss",
    "eval_perplexity": "perplexity",
    "eval_accuracy": "accuracy (0-1)",
    "eval_macro_f1": "macro-F1 (0-1)",
    "gen_chrf": "chrF (0-100)",
    "gen_bleu": "BLEU (0-100)",
}


def loss_unit(comparison: Comparison) -> str:
    return "nats per example" if comparison.kind == "classification" else "nats per token"


def metric_label(comparison: Comparison) -> str:
    """The metric's axis name: the split it is reported on, its units."""
    split = "test" if all(run["split"] == "test" for p in comparison.points for run in p.runs) else "eval"
    name = METRIC_LABELS.get(comparison.metric, comparison.metric)
    return f"{split} {name} ({loss_unit(comparison)})" if name == "loss" else f"{split} {name}"


BASELINE_STYLE = {"color": "black", "marker": "*"}  # full fine-tuning's point


def series_style(index: int, count: int) -> dict:
    """Colour and marker of the index-th of count series, no two alike up to twenty: the ten
    default colours, then their light shades (tab20) with square markers (`C{i}` repeats after ten, so
    a 13-point study drew DoRA and rsLoRA in one orange)."""
    if count <= 10:
        return {"color": f"C{index}", "marker": "o"}
    import matplotlib

    shades = matplotlib.colormaps["tab20"].colors
    colors = shades[0::2] + shades[1::2]
    return {"color": colors[index % 20], "marker": "o" if index % 20 < 10 else "s"}


def error_bars(comparison: Comparison, points: list) -> tuple[list[float], list[float]]:
    """Below and above each point's mean: its 95% interval where every point has one, else the
    standard deviation over seeds (none for one run)."""
    if all(point.interval for point in comparison.points):
        means = [point.mean(comparison.metric) for point in points]
        return (
            [mean - point.interval.low for mean, point in zip(means, points, strict=True)],
            [point.interval.high - mean for mean, point in zip(means, points, strict=True)],
        )
    spread = [point.std(comparison.metric) for point in points]
    return spread, spread


def spread_words(comparison: Comparison) -> str:
    """What the error bars show, for a title."""
    if all(point.interval for point in comparison.points):
        return "mean and 95% interval over examples and seeds"
    if max(len(point.runs) for point in comparison.points) > 1:
        return "mean ± sd over seeds"
    return "one run each"


def write_plots(comparison: Comparison, out: Path, image_format: str = "png") -> list[Path]:
    """frontier, curves and resources figures in `out`, in `image_format`."""
    if image_format not in FORMATS:
        raise LoraftError(f"--format: '{image_format}' is not one of {', '.join(FORMATS)}")
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _save(frontier(comparison), out / f"frontier.{image_format}"),
        _save(curves(comparison), out / f"curves.{image_format}"),
        _save(resources(comparison), out / f"resources.{image_format}"),
    ]
    if len({point.train_size for point in comparison.points}) > 1:
        written.append(_save(learning_curves(comparison), out / f"learning.{image_format}"))
    if any(point.mean("retain_loss_change") is not None for point in comparison.points):
        written.append(_save(forgetting(comparison), out / f"forgetting.{image_format}"))
    return written


def forgetting(comparison: Comparison):
    """What each setting learned (the task's metric) against what it forgot (the rise of the
    `eval.retain` loss): the two axes of "LoRA learns less and forgets less"."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, point in enumerate(comparison.points):
        change = point.mean("retain_loss_change")
        if change is None:
            continue
        below, above = error_bars(comparison, [point])
        style = BASELINE_STYLE if point.baseline else series_style(index, len(comparison.points))
        axis.errorbar(
            [change],
            [point.mean(comparison.metric)],
            xerr=[[point.std("retain_loss_change")], [point.std("retain_loss_change")]],
            yerr=[below, above],
            markersize=12 if point.baseline else 6,
            capsize=3,
            **style,
            linestyle="none",
            label=point.label,
        )
    axis.axvline(0, color="grey", linestyle=":", linewidth=1)
    name = metric_label(comparison)
    axis.set(
        xlabel="retain loss after minus before (nats per token; right: forgot more)",
        ylabel=name,
        title=f"Learned ({name.split(' (')[0]}) against forgotten (retain loss)",
    )
    axis.legend(fontsize=8)
    return figure


# A learning-curve line joins one method's training sizes, each at its own learning rate (tuned
# per size by `loraft sweep --tune`: a small set wants another rate than a large one).
ACROSS_SIZES = ("data.train_size", "train.lr")


def learning_curves(comparison: Comparison):
    """The metric against training examples (log axis), one line a setting: how each method's
    score grows with data (the capacity question of the LoRA literature)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    lines: dict[str, list] = {}
    for point in comparison.points:
        setting = repr(sorted((k, repr(v)) for k, v in point.settings.items() if k not in ACROSS_SIZES))
        lines.setdefault(setting, []).append(point)
    for index, points in enumerate(lines.values()):
        points = sorted(points, key=lambda p: p.mean("train_examples") or 0)
        style = BASELINE_STYLE if points[0].baseline else series_style(index, len(lines))
        axis.errorbar(
            [p.mean("train_examples") for p in points],
            [p.mean(comparison.metric) for p in points],
            yerr=error_bars(comparison, points),
            capsize=3,
            **style,
            label=points[0].method_label,
        )
    return metric_against(figure, axis, comparison, "training examples")


def frontier(comparison: Comparison):
    """The metric against trainable parameters (log axis): which rank is enough."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    lined = [point for point in comparison.points if point.line is not None]
    names = sorted({point.line for point in lined})
    for index, line in enumerate(names):
        chosen = sorted((p for p in lined if p.line == line), key=lambda p: p.mean("trainable_params"))
        xs = [p.mean("trainable_params") for p in chosen]
        axis.errorbar(
            xs,
            [p.mean(comparison.metric) for p in chosen],
            yerr=error_bars(comparison, chosen),
            capsize=3,
            **series_style(index, len(names)),
            label=line,
        )
        for x, point in zip(xs, chosen, strict=True):
            if point.runs[0]["rank"] is None:  # a method without a rank (IA3)
                continue
            axis.annotate(
                f"r={point.runs[0]['rank']}",
                (x, point.mean(comparison.metric)),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 4),
            )
    for point in comparison.points:
        if point.line is None:
            axis.errorbar(
                [point.mean("trainable_params")],
                [point.mean(comparison.metric)],
                yerr=error_bars(comparison, [point]),
                marker="*",
                markersize=12,
                capsize=3,
                color="black",
                linestyle="none",
                label=f"{point.label} fine-tuning",
            )
            if point.baseline:
                axis.axhline(point.mean(comparison.metric), color="black", linestyle=":", linewidth=1)
                if point.interval:  # what "as good as full" can mean, drawn across the figure
                    axis.axhspan(point.interval.low, point.interval.high, color="black", alpha=0.08)
    majority = majority_share(comparison)
    if majority is not None:
        axis.axhline(majority, color="grey", linestyle="--", linewidth=1, label="majority class")
    return metric_against(figure, axis, comparison, "trainable parameters")


def metric_against(figure, axis, comparison: Comparison, what: str):
    """The figure's axes named: the metric against `what` on a log axis, and what the bars are."""
    axis.set_xscale("log")
    name = metric_label(comparison)
    axis.set(
        xlabel=f"{what} (log scale)",
        ylabel=name,
        title=f"{name.split(' (')[0]} against {what} ({spread_words(comparison)})",
    )
    axis.legend(fontsize=8)
    return figure


def majority_share(comparison: Comparison) -> float | None:
    """For accuracy: the share of the reported examples in their most common class, the score
    of always guessing it."""
    if comparison.metric != "eval_accuracy":
        return None
    values = next((found for p in comparison.points if (found := p.example_values())), None)
    if not values:
        return None
    gold = values[0]["gold"].astype(int)
    return float(max(np.bincount(gold)) / len(gold)) if len(gold) else None


def curves(comparison: Comparison):
    """Eval loss against optimizer step, every run (one line a seed), one colour a point."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, point in enumerate(comparison.points):
        seeds = f" ({len(point.runs)} seeds)" if len(point.runs) > 1 else ""
        for number, run in enumerate(point.runs):
            records = [
                json.loads(line) for line in (Path(run["run"]) / "metrics.jsonl").read_text().splitlines()
            ]
            evals = [r for r in records if r.get("kind") == "eval" and "eval_loss" in r]
            axis.plot(
                [r["step"] for r in evals],
                [r["eval_loss"] for r in evals],
                color=series_style(index, len(comparison.points))["color"],
                alpha=0.8,
                linewidth=1,
                marker=".",  # a run evaluated once is still a point
                label=point.label + seeds if number == 0 else None,
            )
    selection = (
        "validation" if all(run["split"] == "test" for p in comparison.points for run in p.runs) else "eval"
    )
    axis.set(
        xlabel="optimizer step",
        ylabel=f"{selection} loss ({loss_unit(comparison)})",
        title=f"{selection.capitalize()} loss during training (one colour a setting, one line a seed)",
    )
    axis.legend(fontsize=8, ncol=2)
    return figure


def resources(comparison: Comparison):
    """Peak memory and training throughput, one bar a point."""
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4.5))
    labels = [point.label for point in comparison.points]
    colors = [
        "black" if point.baseline else series_style(index, len(comparison.points))["color"]
        for index, point in enumerate(comparison.points)
    ]
    for axis, key in ((memory, "peak_memory_mb"), (speed, "train_tokens_per_s")):
        axis.barh(
            labels,
            [p.mean(key) for p in comparison.points],
            xerr=[p.std(key) for p in comparison.points],
            color=colors,
            capsize=3,
        )
        axis.tick_params(axis="y", labelsize=8)
    memory.set(xlabel="peak memory (MB)", title="Peak memory")
    speed.set(xlabel="training tokens per second (non-padding)", title="Training throughput")
    speed.set_yticklabels([])
    figure.suptitle("Resources per setting (mean ± sd over seeds; black: full fine-tuning)")
    return figure


def tuning_figure(tuned: list, path: Path) -> Path | None:
    """The validation metric against the tuned value, one line a point (log axis for a value
    spanning more than a factor 10, as learning rates do); None unless one numeric key was tuned."""
    if not tuned or len(tuned[0].keys) != 1:
        return None
    try:
        numbers = [[float(values[0]) for values in choice.tried] for choice in tuned]
    except ValueError:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (choice, xs) in enumerate(zip(tuned, numbers, strict=True)):
        pairs = sorted((x, score) for x, score in zip(xs, choice.scores, strict=True) if score is not None)
        if not pairs:
            continue
        style = series_style(index, len(tuned))
        axis.plot(*zip(*pairs, strict=True), **style, label=choice.combination or "recipe")
        if choice.chosen is not None:
            best = float(choice.chosen[0])
            axis.plot([best], [dict(pairs)[best]], marker="*", markersize=14, color=style["color"])
    flat = [x for xs in numbers for x in xs]
    if min(flat) > 0 and max(flat) / min(flat) > 10:
        axis.set_xscale("log")
    axis.set(
        xlabel=tuned[0].keys[0],
        ylabel=f"validation {tuned[0].metric.removeprefix('eval_')} (best checkpoint)",
        title="Tuning on the validation split (one seed a value; star: chosen)",
    )
    axis.legend(fontsize=8)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    """Titles wrapped to their axes' width (a long one was cut off at the figure's edges)."""
    import matplotlib.pyplot as plt

    for axis in figure.axes:
        width = round(axis.get_position().width * figure.get_figwidth() * 11)  # characters that fit
        axis.set_title("\n".join(textwrap.wrap(axis.get_title(), max(width, 20))))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
