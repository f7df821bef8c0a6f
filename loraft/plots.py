"""Figures of a comparison, each readable alone: the LoRA frontier, eval-loss curves, resources."""

from __future__ import annotations

import json
from pathlib import Path

from loraft.errors import LoraftError
from loraft.report import Comparison

FORMATS = ("png", "svg", "pdf")
# Axis names of the usual metrics, with their units; any other metric shows its key.
METRIC_LABELS = {
    "eval_loss": "eval loss (nats per token)",
    "eval_perplexity": "eval perplexity",
    "eval_accuracy": "dev accuracy (0-1)",
    "eval_macro_f1": "dev macro-F1 (0-1)",
    "gen_chrf": "chrF (0-100)",
    "gen_bleu": "BLEU (0-100)",
}


def write_plots(comparison: Comparison, out: Path, image_format: str = "png") -> list[Path]:
    """frontier, curves and resources figures in `out`, in `image_format`."""
    if image_format not in FORMATS:
        raise LoraftError(f"--format: '{image_format}' is not one of {', '.join(FORMATS)}")
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    out.mkdir(parents=True, exist_ok=True)
    return [
        _save(frontier(comparison), out / f"frontier.{image_format}"),
        _save(curves(comparison), out / f"curves.{image_format}"),
        _save(resources(comparison), out / f"resources.{image_format}"),
    ]


def frontier(comparison: Comparison):
    """The metric against trainable parameters (log axis): which rank is enough."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    lined = [point for point in comparison.points if point.line is not None]
    for index, line in enumerate(sorted({point.line for point in lined})):
        chosen = sorted((p for p in lined if p.line == line), key=lambda p: p.mean("trainable_params"))
        xs = [p.mean("trainable_params") for p in chosen]
        axis.errorbar(
            xs,
            [p.mean(comparison.metric) for p in chosen],
            yerr=[p.std(comparison.metric) for p in chosen],
            marker="o",
            capsize=3,
            color=f"C{index}",
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
                yerr=[point.std(comparison.metric)],
                marker="*",
                markersize=12,
                capsize=3,
                color="black",
                linestyle="none",
                label=f"{point.label} fine-tuning",
            )
            if point.baseline:
                axis.axhline(point.mean(comparison.metric), color="black", linestyle=":", linewidth=1)
    axis.set_xscale("log")
    name = METRIC_LABELS.get(comparison.metric, comparison.metric)
    axis.set(
        xlabel="trainable parameters (log scale)",
        ylabel=name,
        title=f"{name.split(' (')[0]} against trainable parameters (mean ± sd over seeds)",
    )
    axis.legend(fontsize=8)
    return figure


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
                color=f"C{index % 10}",
                alpha=0.8,
                linewidth=1,
                marker=".",  # a run evaluated once is still a point
                label=point.label + seeds if number == 0 else None,
            )
    axis.set(
        xlabel="optimizer step",
        ylabel="eval loss (nats per token)",
        title="Evaluation loss during training (one colour a setting, one line a seed)",
    )
    axis.legend(fontsize=8, ncol=2)
    return figure


def resources(comparison: Comparison):
    """Peak memory and training throughput, one bar a point."""
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4.5))
    labels = [point.label for point in comparison.points]
    colors = [
        "black" if point.line is None else f"C{index % 10}" for index, point in enumerate(comparison.points)
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
    figure.suptitle("Resources per setting (mean ± sd over seeds; black: not LoRA)")
    return figure


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
