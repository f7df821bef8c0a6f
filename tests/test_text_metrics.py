"""Generation metrics: sacrebleu parity, hand-checked BLEU and distinct-n, evaluate loading."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF

from loraft.errors import LoraftError
from loraft.text_metrics import (
    bleu_summary,
    chrf,
    corpus_bleu,
    distinct_n,
    evaluate_metric,
    sentence_bleus,
    signatures,
)

HYPOTHESES = ["Shall I compare thee to a summer's day", "Thou art more lovely", "rough winds"]
REFERENCES = ["Shall I compare you to a summer day", "Thou art more lovely and temperate", "wind"]
MAT = "the cat sat on the mat"


def test_chrf_is_sacrebleus_corpus_chrf() -> None:
    expected = CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score
    assert chrf(HYPOTHESES, REFERENCES) == pytest.approx(expected)
    assert 0 < chrf(HYPOTHESES, REFERENCES) < 100
    assert chrf(REFERENCES, REFERENCES) == pytest.approx(100)


def test_corpus_bleu_is_sacrebleus_corpus_bleu() -> None:
    expected = BLEU().corpus_score(HYPOTHESES, [REFERENCES]).score
    assert corpus_bleu(HYPOTHESES, REFERENCES) == pytest.approx(expected)


def test_sentence_bleu_on_hand_checked_pairs() -> None:
    scores = sentence_bleus([MAT, "the cat", "a dog"], [MAT, MAT, MAT])
    # "the cat": both its 1- and 2-grams match (effective order 2), brevity penalty e^(1-6/2)
    assert scores == pytest.approx([100.0, 100 * math.exp(-2), 0.0])


def test_sentence_bleu_needs_one_reference_per_hypothesis() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        sentence_bleus([MAT, MAT], [MAT])


def test_bleu_summary_averages_the_best_and_worst_tenth() -> None:
    summary = bleu_summary([float(score) for score in reversed(range(20))])
    assert summary == {"mean": 9.5, "top10_mean": 18.5, "bottom10_mean": 0.5}
    assert bleu_summary([4.0, 1.0, 7.0]) == {"mean": 4.0, "top10_mean": 7.0, "bottom10_mean": 1.0}
    with pytest.raises(ValueError):
        bleu_summary([])


def test_distinct_n_on_a_hand_checked_example() -> None:
    texts = ["a b a b", "a b"]
    assert distinct_n(texts, 1) == pytest.approx(2 / 6)
    assert distinct_n(texts, 2) == pytest.approx(2 / 4)  # ab ba ab | ab: n-grams stay in a text
    assert distinct_n(["one two three"], 3) == 1.0
    assert distinct_n(texts, 5) == 0.0


def test_signatures_describe_each_metric() -> None:
    signed = signatures()
    assert set(signed) == {"chrf", "bleu", "sentence_bleu"}
    assert all("nrefs:1" in text and "version:" in text for text in signed.values())
    assert "nc:6" in signed["chrf"]
    assert "tok:13a" in signed["bleu"]
    assert "smooth:exp" in signed["sentence_bleu"] and "eff:yes" in signed["sentence_bleu"]


EXACT_MATCH_SCRIPT = textwrap.dedent(
    '''
    """Share of predictions equal to their reference."""
    import datasets
    import evaluate


    class ExactCopy(evaluate.Metric):
        def _info(self):
            text = datasets.Value("string")
            return evaluate.MetricInfo(
                description="exact match",
                citation="",
                inputs_description="predictions and references, strings",
                features=datasets.Features({"predictions": text, "references": text}),
            )

        def _compute(self, predictions, references):
            matches = [p == r for p, r in zip(predictions, references)]
            return {"exact_match": sum(matches) / len(matches), "matches": matches}
    '''
)


def test_evaluate_metric_loads_a_local_metric_directory(tmp_path: Path) -> None:
    directory = tmp_path / "exact_copy"
    directory.mkdir()
    (directory / "exact_copy.py").write_text(EXACT_MATCH_SCRIPT)
    scores = evaluate_metric(f"evaluate:{directory}", ["a", "b", "c", "d"], ["a", "x", "c", "y"])
    assert scores == {"exact_match": 0.5}  # the list of matches is not a score


def test_evaluate_metric_needs_the_evaluate_prefix() -> None:
    with pytest.raises(LoraftError, match="expected 'evaluate:<name or path>'"):
        evaluate_metric("rouge", ["a"], ["a"])


def test_an_unknown_hub_metric_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluate

    # Fail at once instead of waiting on the network, whatever this machine can reach.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    with pytest.raises(LoraftError) as error:
        evaluate_metric("evaluate:no_such_metric", ["a"], ["a"])
    message = str(error.value)
    assert message.startswith("eval.metrics: cannot load Hugging Face metric 'no_such_metric")
    assert "\n" not in message
