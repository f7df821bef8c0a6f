"""Bootstrap intervals and paired differences (`loraft.statistics`), and the recommendation
`loraft compare` prints first, on synthetic cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from loraft import statistics
from loraft.errors import LoraftError
from loraft.report import Comparison, Point, confide, format_comparison, recommendation


def accuracy_run(correct: np.ndarray) -> dict[str, np.ndarray]:
    """A classifier's example values with these examples right (gold 0; wrong ones predict 1)."""
    return {"gold": np.zeros(len(correct)), "predicted": 1.0 - correct, "loss": 1.0 - correct}


def test_intervals_cover_a_known_accuracy_at_the_stated_rate() -> None:
    """300 test sets of 400 examples, each right with probability 0.7: the 95% interval holds
    0.7 in about 95% of them."""
    rng = np.random.default_rng(0)
    weights = statistics.example_weights(400, 1000, seed=5)
    covered = 0
    for _ in range(300):
        run = accuracy_run((rng.random(400) < 0.7).astype(float))
        covered += statistics.point_interval([run], "eval_accuracy", weights).contains(0.7)
    assert 0.91 <= covered / 300 <= 0.98, covered / 300


def test_intervals_over_seeds_cover_the_seed_mean() -> None:
    """Seeds that differ (each seed's own accuracy drawn around 0.6): the interval over seeds and
    examples holds the expected accuracy about 95% of the time; examples alone would not."""
    rng = np.random.default_rng(1)
    weights = statistics.example_weights(300, 1000, seed=6)
    wide = statistics.example_weights(1500, 1000, seed=7)
    covered = covered_by_examples_alone = 0
    for _ in range(200):
        seeds = [accuracy_run((rng.random(300) < rng.normal(0.6, 0.03)).astype(float)) for _ in range(5)]
        covered += statistics.point_interval(seeds, "eval_accuracy", weights).contains(0.6)
        pooled = accuracy_run(np.concatenate([run["predicted"] == 0 for run in seeds]).astype(float))
        covered_by_examples_alone += statistics.point_interval([pooled], "eval_accuracy", wide).contains(0.6)
    assert 0.88 <= covered / 200 <= 0.99, covered / 200
    assert covered_by_examples_alone / 200 < covered / 200


def test_the_paired_difference_is_the_mean_of_per_example_differences() -> None:
    rng = np.random.default_rng(2)
    hard = rng.random(500) < 0.3  # examples both get wrong more often: correlated outcomes
    ours = ((rng.random(500) < 0.8) & ~(hard & (rng.random(500) < 0.9))).astype(float)
    theirs = ((rng.random(500) < 0.85) & ~(hard & (rng.random(500) < 0.9))).astype(float)
    weights = statistics.example_weights(500, 2000)
    paired = statistics.paired_difference(
        [accuracy_run(ours)], [accuracy_run(theirs)], "eval_accuracy", weights
    )
    assert paired.estimate == pytest.approx(np.mean(ours - theirs))
    assert paired.low < paired.estimate < paired.high
    # pairing removes the shared difficulty: narrower than two independent intervals' spread
    independent = statistics.example_weights(500, 2000, seed=9)
    unpaired = statistics.weighted_metric(
        accuracy_run(ours), "eval_accuracy", weights
    ) - statistics.weighted_metric(accuracy_run(theirs), "eval_accuracy", independent)
    assert paired.high - paired.low < np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5)


def test_weighted_metrics_equal_the_tasks_own_on_a_resample() -> None:
    """A row of weights is a resample: the metric equals scikit-learn's (macro-F1) or the
    token-weighted loss on the examples repeated that many times."""
    rng = np.random.default_rng(3)
    gold, predicted = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
    values = {"gold": gold.astype(float), "predicted": predicted.astype(float), "loss": rng.random(200)}
    weights = statistics.example_weights(200, 3, seed=4)
    for row in weights:
        repeated = np.repeat(np.arange(200), row.astype(int))
        expected = f1_score(gold[repeated], predicted[repeated], average="macro", zero_division=0)
        assert statistics.weighted_metric(values, "eval_macro_f1", row[None])[0] == pytest.approx(expected)
    lm = {"loss_sum": rng.random(50) * 30, "tokens": rng.integers(1, 40, 50).astype(float)}
    row = statistics.example_weights(50, 1, seed=8)
    repeated = np.repeat(np.arange(50), row[0].astype(int))
    expected = lm["loss_sum"][repeated].sum() / lm["tokens"][repeated].sum()
    assert statistics.weighted_metric(lm, "eval_loss", row)[0] == pytest.approx(expected)
    with pytest.raises(LoraftError, match="--metric: gen_chrf has no interval"):
        statistics.weighted_metric(lm, "gen_chrf", row)  # a loss's values hold no chrF counts


def test_resampled_chrf_is_sacrebleus_corpus_chrf_of_the_resampled_texts() -> None:
    """chrF is a corpus score, not a mean: a resample's value is sacrebleu's chrF of the texts
    repeated as the resample repeats them, and the estimate is the run's own gen_chrf."""
    from loraft.text_metrics import chrf, chrf_statistics

    rng = np.random.default_rng(9)
    words = [
        "shall",
        "i",
        "compare",
        "thee",
        "to",
        "a",
        "summer",
        "day",
        "thou",
        "art",
        "more",
        "lovely",
        "and",
        "temperate",
    ]
    references = [" ".join(rng.choice(words, 12)) for _ in range(15)]
    hypotheses = [" ".join(rng.choice(words, rng.integers(3, 14))) for _ in range(15)]
    values = statistics.as_arrays({"chrf_stats": chrf_statistics(hypotheses, references)})
    assert statistics.estimate([values], "gen_chrf") == pytest.approx(chrf(hypotheses, references))
    for row in statistics.example_weights(15, 3, seed=2):
        repeated = np.repeat(np.arange(15), row.astype(int))
        expected = chrf([hypotheses[i] for i in repeated], [references[i] for i in repeated])
        assert statistics.weighted_metric(values, "gen_chrf", row[None])[0] == pytest.approx(expected)


# --- the recommendation on constructed runs ---------------------------------------------


def point(
    label: str, trainable: int, accuracies: list[float], order: np.ndarray, baseline: bool = False
) -> Point:
    """A point of seeds with these test accuracies on the same 1,000 examples, which every
    setting finds hard in the same `order` (as real models share their hard examples)."""
    runs, examples = [], []
    for accuracy in accuracies:
        correct = np.zeros(1000)
        correct[order[: round(accuracy * 1000)]] = 1
        run = accuracy_run(correct)
        runs.append(
            {
                "eval_accuracy": accuracy,
                "trainable_params": trainable,
                "peak_memory_mb": 1000 + trainable / 1000,
                "train_tokens_per_s": 100.0,
                "trainable_pct": trainable / 1e6,
                "wall_s": 1.0,
                "rank": None,
                "split": "test",
            }
        )
        examples.append({name: column.tolist() for name, column in run.items()})
    return Point(label, "full" if baseline else "lora", baseline=baseline, runs=runs, examples=examples)


def constructed(**accuracies: list[float]) -> Comparison:
    order = np.random.default_rng(4).permutation(1000)
    trainable = {"full": 1_000_000, "r1": 1_000, "r4": 4_000, "r16": 16_000}
    points = [
        point(name, trainable[name], values, order, name == "full") for name, values in accuracies.items()
    ]
    comparison = Comparison("eval_accuracy", points, [])
    confide(comparison)
    return comparison


def test_the_recommendation_is_the_cheapest_point_within_the_margin() -> None:
    comparison = constructed(full=[0.80, 0.80, 0.80], r1=[0.70, 0.70, 0.70], r4=[0.805] * 3, r16=[0.81] * 3)
    line = recommendation(comparison)
    assert line.startswith("recommendation: r4: within 1 point (0.01) of full fine-tuning at 95% confidence")
    assert "0.004x full's trainable parameters" in line
    assert " ".join(format_comparison(comparison).split("\n\n")[0].split()) == line  # first, wrapped
    # a wider margin lets the cheaper rank in; a negative one is refused
    assert recommendation(comparison, "0.2").startswith("recommendation: r1:")
    with pytest.raises(LoraftError, match="--margin: expected a number or a percentage"):
        recommendation(comparison, "a lot")
    for bad in ("-1", "nan", "inf%"):
        with pytest.raises(LoraftError, match="--margin: expected a margin of 0 or more"):
            recommendation(comparison, bad)


def test_the_recommendation_says_none_and_by_how_much() -> None:
    comparison = constructed(full=[0.80, 0.80], r1=[0.60, 0.60], r4=[0.74, 0.74])
    line = recommendation(comparison)
    assert line.startswith("recommendation: none: no point is within 1 point (0.01) of full fine-tuning")
    assert "the closest, r4, may be" in line
    indistinguishable = [p.label for p in comparison.points if p.versus_full and p.versus_full.contains(0)]
    assert indistinguishable == []


def test_a_loss_margin_is_relative_and_lower_is_better() -> None:
    rng = np.random.default_rng(5)

    def lm_point(label: str, trainable: int, loss: float, baseline: bool = False) -> Point:
        tokens = rng.integers(20, 40, 800).astype(float)
        sums = tokens * (loss + rng.normal(0, 0.3, 800))
        row = {"eval_loss": float(sums.sum() / tokens.sum()), "trainable_params": trainable}
        row |= {
            "peak_memory_mb": 1.0,
            "train_tokens_per_s": 1.0,
            "trainable_pct": 1.0,
            "wall_s": 1.0,
            "rank": None,
        }
        values = {"loss_sum": sums.tolist(), "tokens": tokens.tolist()}
        return Point(label, "lora", baseline=baseline, runs=[row], examples=[values])

    comparison = Comparison("eval_loss", [lm_point("full", 100, 3.0, True), lm_point("r4", 4, 3.02)], [])
    confide(comparison)
    assert recommendation(comparison).startswith("recommendation: r4: within 2% of full's eval_loss")
    assert recommendation(comparison, "0.1%").startswith("recommendation: none:")


def test_compare_says_when_resources_come_from_other_machines_or_a_busy_one() -> None:
    comparison = constructed(full=[0.80, 0.80], r4=[0.80, 0.80])
    quiet = {"cpu": "AMD EPYC", "gpu": None, "cores": 2, "load_average": [2.0, 2.1, 2.0]}
    for run in comparison.points[0].runs:
        run["machine"], run["run"] = quiet, "/runs/full"
    busy = dict(quiet, load_average=[6.0, 5.2, 3.0])
    comparison.points[1].runs[0].update(machine=dict(quiet, cpu="Intel Xeon"), run="/runs/r4-a")
    comparison.points[1].runs[1].update(machine=busy, run="/runs/r4-b")
    table = format_comparison(comparison)
    assert "resource figures come from 2 machines (AMD EPYC, 2 cores; Intel Xeon, 2 cores)" in table
    assert "trained on a busy machine, so slower than alone: r4-b (load 5.2 on 2 cores)" in table
    for point in comparison.points:
        for run in point.runs:
            run["machine"] = quiet
    assert "machines" not in format_comparison(comparison) and "busy" not in format_comparison(comparison)


def test_a_runs_chrf_counts_come_from_what_it_scored(tmp_path) -> None:
    """`generations.jsonl`'s hypotheses and references give the counts; a file from before the
    hypothesis was recorded, or a malformed one, gives none (no interval, no guess)."""
    import json

    from loraft.run_dir import RunDirectory
    from loraft.text_metrics import chrf_statistics

    rows = [
        {"prompt": "p", "continuation": "c", "reference": f"ref {i}", "hypothesis": f"hyp {i}"}
        for i in range(3)
    ]
    path = tmp_path / "generations.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expected = chrf_statistics([row["hypothesis"] for row in rows], [row["reference"] for row in rows])
    assert RunDirectory(tmp_path).read_generation_values() == {"chrf_stats": expected}
    for text in ("".join(json.dumps({**row, "hypothesis": None}) + "\n" for row in rows), "{not json\n", ""):
        path.write_text(text)
        assert RunDirectory(tmp_path).read_generation_values() is None
