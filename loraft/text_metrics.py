"""Scores for generated text: chrF and BLEU from sacrebleu, distinct-n, Hugging Face `evaluate`.

Every hypothesis has exactly one reference. Scores are on sacrebleu's 0-100 scale.
"""

from __future__ import annotations

import functools
from numbers import Number
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from loraft.errors import LoraftError

EVALUATE_PREFIX = "evaluate:"


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF, sacrebleu's defaults (character 6-grams, beta 2): how CS224n scores sonnets."""
    return CHRF().corpus_score(hypotheses, [references]).score


def chrf_statistics(hypotheses: list[str], references: list[str]) -> list[list[int]]:
    """Each hypothesis's chrF counts (character and word n-gram matches and totals), whose sum
    over any multiset of examples gives that corpus's chrF: what a bootstrap resamples."""
    # sacrebleu's paired bootstrap (sacrebleu.significance) resamples these same counts
    return CHRF()._extract_corpus_statistics(hypotheses, [references])


def chrf_of_statistics(totals: list[int]) -> float:
    """Corpus chrF from summed `chrf_statistics`."""
    return CHRF()._compute_score_from_stats(list(totals)).score


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU with sacrebleu's defaults (13a tokenization, exponential smoothing)."""
    return BLEU().corpus_score(hypotheses, [references]).score


def _sentence_bleu_metric() -> BLEU:
    # sacrebleu's sentence-level defaults: "exp" smoothing (Chen & Cherry 2014, method 3) and
    # effective order, so a short text is not scored 0 for lacking 4-grams. Unsmoothed sentence
    # BLEU collapses to ~1e-158 whenever one n-gram order has no match, which says nothing.
    return BLEU(smooth_method="exp", effective_order=True)


def sentence_bleus(hypotheses: list[str], references: list[str]) -> list[float]:
    """BLEU of each hypothesis against its reference (smoothed; see `_sentence_bleu_metric`)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    metric = _sentence_bleu_metric()
    pairs = zip(hypotheses, references, strict=True)
    return [metric.sentence_score(hypothesis, [reference]).score for hypothesis, reference in pairs]


def bleu_summary(scores: list[float]) -> dict[str, float]:
    """Mean sentence BLEU, and the means of the best and worst tenth of the texts.

    A tenth is `max(1, n // 10)` texts, so it never holds more than 10% of 10 or more texts.
    """
    if not scores:
        raise ValueError("bleu_summary needs at least one score")
    ranked = sorted(scores)
    tenth = max(1, len(ranked) // 10)
    return {
        "mean": sum(ranked) / len(ranked),
        "top10_mean": sum(ranked[-tenth:]) / tenth,
        "bottom10_mean": sum(ranked[:tenth]) / tenth,
    }


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over whitespace tokens, counted within each text.

    Written here because it is five lines and no maintained library ships it (Li et al. 2016).
    0.0 when no text has n tokens.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}")
    ngrams = []
    for text in texts:
        tokens = text.split()
        ngrams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def signatures() -> dict[str, str]:
    """sacrebleu's signature of each metric above, to record next to the scores."""
    metrics = {"chrf": CHRF(), "bleu": BLEU(), "sentence_bleu": _sentence_bleu_metric()}
    signed = {}
    for name, metric in metrics.items():
        metric.corpus_score(["a"], [["a"]])  # the signature needs the reference count: one
        signed[name] = str(metric.get_signature())
    return signed


def parse_metric_spec(spec: str) -> tuple[str, bool]:
    """(`name`, is it local code) of `evaluate:<hub name>` or `evaluate:<local dir or .py>`."""
    name = spec[len(EVALUATE_PREFIX) :].strip() if spec.startswith(EVALUATE_PREFIX) else ""
    if not name:
        raise LoraftError(f"eval.metrics: expected 'evaluate:<name or path>', got {spec!r}")
    looks_local = name.startswith(("/", "./", "../", "~")) or name.endswith(".py")
    if looks_local and not Path(name).expanduser().exists():
        raise LoraftError(f"eval.metrics: {spec!r}: no such file or folder")
    return name, looks_local or Path(name).expanduser().exists()


@functools.cache
def load_metric(spec: str):
    """The `evaluate` module of a metric spec, loaded once per process; failures are one line."""
    import evaluate  # slow to import (datasets, pandas): only when a recipe asks for it

    from loraft.hub import go_offline_unless_reachable, offline_hint

    name, local = parse_metric_spec(spec)
    if not local:
        go_offline_unless_reachable()
    try:
        return evaluate.load(str(Path(name).expanduser()) if local else name)
    except Exception as error:  # evaluate raises anything from FileNotFoundError to HTTP errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoraftError(
            f"eval.metrics: cannot load Hugging Face metric {name!r} "
            f"(offline, misspelt, or missing a dependency?): {reason}{offline_hint()}"
        ) from None


def evaluate_metric(spec: str, predictions: list[str], references: list[str]) -> dict[str, float]:
    """Run a Hugging Face `evaluate` metric; its numeric results under its own keys."""
    results = load_metric(spec).compute(predictions=predictions, references=references) or {}
    return {key: float(value) for key, value in results.items() if _is_number(value)}


def _is_number(value: object) -> bool:
    # numpy scalars and 0-d arrays count too: metrics often return them
    if getattr(value, "ndim", None) == 0:
        value = value.item()
    return isinstance(value, Number)
