"""How sure a comparison is: bootstrap intervals over test examples and seeds, and paired
differences between two settings on the same examples.

A point's runs (its seeds) are scored on the same examples, whose values each run keeps
(`Task.example_values`). A draw resamples the examples with replacement, one draw shared by
every point (which pairs the comparisons), and each point's seeds with replacement, and
computes the metric as the task does from the resampled values: a mean (accuracy, a
classifier's loss), summed losses over summed tokens (a language model's loss), macro-F1 from
the resampled confusion counts, corpus chrF from the resampled n-gram counts. Percentile
intervals over 2,000 draws, seeded.

Written with numpy: `scipy.stats.bootstrap` resamples one level (examples) and draws anew for
every call, where this needs examples and seeds resampled together and one example draw
shared between the two sides of a difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loraft.errors import LoraftError

DRAWS = 2000
LEVEL = 0.95
METRICS = ("eval_accuracy", "eval_macro_f1", "eval_loss", "eval_perplexity", "gen_chrf")


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval at `LEVEL`."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def as_arrays(values: dict[str, list]) -> dict[str, np.ndarray]:
    return {name: np.asarray(column, dtype=np.float64) for name, column in values.items()}


def example_weights(count: int, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, count) multiplicities of the examples, each row a resample with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(count, np.full(count, 1 / count), size=draws).astype(np.float64)


def weighted_metric(values: dict[str, np.ndarray], metric: str, weights: np.ndarray) -> np.ndarray:
    """`metric` of the examples under each row of `weights` (one value a row)."""
    if "loss_sum" in values and metric in ("eval_loss", "eval_perplexity"):  # token-weighted
        loss = weights @ values["loss_sum"] / np.maximum(weights @ values["tokens"], 1)
        return loss if metric == "eval_loss" else np.exp(np.minimum(loss, 50))
    if "chrf_stats" in values and metric == "gen_chrf":  # corpus chrF of each resampled corpus
        from loraft.text_metrics import chrf_of_statistics

        totals = weights @ values["chrf_stats"]
        return np.array([chrf_of_statistics(row.round().astype(int).tolist()) for row in totals])
    if "gold" in values:
        gold, predicted, counts = values["gold"], values["predicted"], weights.sum(axis=1)
        if metric == "eval_accuracy":
            return weights @ (gold == predicted) / counts
        if metric == "eval_loss":
            return weights @ values["loss"] / counts
        if metric == "eval_macro_f1":
            return _macro_f1(gold, predicted, weights)
    raise LoraftError(f"--metric: {metric} has no interval; intervals are computed for {', '.join(METRICS)}")


def _macro_f1(gold: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro-F1 as scikit-learn computes it (over the labels present, zero where undefined),
    from each row's weighted confusion counts."""
    labels = np.union1d(gold, predicted)
    is_gold, is_predicted = gold[:, None] == labels, predicted[:, None] == labels
    hits = weights @ (is_gold & is_predicted)
    false_positives = weights @ (is_predicted & ~is_gold)
    misses = weights @ (is_gold & ~is_predicted)
    present = (hits + false_positives + misses) > 0
    f1 = np.where(present, 2 * hits / np.maximum(2 * hits + false_positives + misses, 1e-12), 0.0)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def seed_resampled(
    runs: list[dict[str, np.ndarray]], metric: str, weights: np.ndarray, seed: int
) -> np.ndarray:
    """The point's metric under each example draw, averaged over a resample of its seeds."""
    per_run = np.stack([weighted_metric(run, metric, weights) for run in runs])  # (runs, draws)
    picks = np.random.default_rng(seed).integers(0, len(runs), size=per_run.shape)
    return np.take_along_axis(per_run, picks, axis=0).mean(axis=0)


def estimate(runs: list[dict[str, np.ndarray]], metric: str) -> float:
    """The metric on every example, the mean over the runs (what the table reports)."""
    count = len(next(iter(runs[0].values())))
    ones = np.ones((1, count))
    return float(np.mean([weighted_metric(run, metric, ones)[0] for run in runs]))


def percentile_interval(value: float, draws: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(value, float(low), float(high))


def point_interval(
    runs: list[dict[str, np.ndarray]], metric: str, weights: np.ndarray, seed: int = 1
) -> Interval:
    """The interval of a point's metric, over examples and seeds."""
    return percentile_interval(estimate(runs, metric), seed_resampled(runs, metric, weights, seed))


def paired_difference(
    runs: list[dict[str, np.ndarray]],
    baseline: list[dict[str, np.ndarray]],
    metric: str,
    weights: np.ndarray,
    seed: int = 1,
) -> Interval:
    """point minus baseline on the same examples: the same example draw on both sides, each
    side's seeds resampled on their own."""
    difference = estimate(runs, metric) - estimate(baseline, metric)
    draws = seed_resampled(runs, metric, weights, seed) - seed_resampled(baseline, metric, weights, seed + 1)
    return percentile_interval(difference, draws)
