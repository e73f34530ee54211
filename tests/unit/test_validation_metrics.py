"""core.validation: reference scores against the libraries' own results, diversity, memorisation, the registry."""

from __future__ import annotations

import math
import random

import pytest
import sacrebleu
from rouge_score import rouge_scorer  # type: ignore[import-untyped]

from core.validation import diversity, memorisation, reference
from core.validation.fluency import fluency, perplexity
from core.validation.report import (
    DEFAULT_METRICS,
    METRICS,
    Inputs,
    MetricSelectionError,
    check_limits,
    evaluate,
    headline,
    select_metrics,
)
from core.validation.semantic import cosine, embedding_similarity

CANDIDATES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog",
    "It is raining heavily in London today.",
    "",
]
REFERENCES = [
    ["The cat is sitting on the mat.", "A cat sat on a mat."],
    ["The quick brown fox jumped over the lazy dog."],
    ["Heavy rain falls on London today."],
    ["Nothing was generated."],
]


# -- reference-based: values are the libraries' own ------------------------------------------------


def test_bleu_matches_sacrebleu() -> None:
    result = reference.bleu(CANDIDATES, REFERENCES)
    for candidate, refs, got in zip(CANDIDATES, REFERENCES, result.items, strict=True):
        assert got == sacrebleu.sentence_bleu(candidate, refs).score
    streams = [[r[0] for r in REFERENCES], [r[1] if len(r) > 1 else None for r in REFERENCES]]
    assert result.corpus == sacrebleu.corpus_bleu(CANDIDATES, streams).score  # type: ignore[arg-type]
    assert result.items[3] == 0.0
    assert 0 < result.items[0] < 100


def test_bleu_single_reference_corpus_equals_plain_corpus_bleu() -> None:
    refs = [[r[0]] for r in REFERENCES]
    assert reference.bleu(CANDIDATES, refs).corpus == sacrebleu.corpus_bleu(CANDIDATES, [[r[0] for r in refs]]).score
    assert reference.bleu(["same words here"], [["same words here"]]).items == [pytest.approx(100.0)]


def test_chrf_matches_sacrebleu() -> None:
    result = reference.chrf(CANDIDATES, REFERENCES)
    for candidate, refs, got in zip(CANDIDATES, REFERENCES, result.items, strict=True):
        assert got == sacrebleu.sentence_chrf(candidate, refs).score
    streams = [[r[0] for r in REFERENCES], [r[1] if len(r) > 1 else None for r in REFERENCES]]
    assert result.corpus == sacrebleu.corpus_chrf(CANDIDATES, streams).score  # type: ignore[arg-type]


def test_rouge_matches_rouge_score() -> None:
    results = reference.rouge(CANDIDATES, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for t in ("rouge1", "rouge2", "rougeL"):
        expected = [scorer.score_multi(refs, c)[t].fmeasure for c, refs in zip(CANDIDATES, REFERENCES, strict=True)]
        assert results[t].items == expected
        assert results[t].corpus == pytest.approx(sum(expected) / len(expected))
    assert results["rouge1"].items[1] == scorer.score(REFERENCES[1][0], CANDIDATES[1])["rouge1"].fmeasure
    with pytest.raises(ValueError, match="unknown ROUGE"):
        reference.rouge(CANDIDATES, REFERENCES, ["rouge9x"])


# -- diversity ---------------------------------------------------------------------------------------


def test_distinct_n_by_hand() -> None:
    result = diversity.distinct_n(["a b a b", "c d", "x"], 2)
    # "a b a b": bigrams ab, ba, ab -> 2 distinct of 3; "c d": 1 of 1; "x": no bigram.
    assert result.items == [pytest.approx(2 / 3), 1.0, None]
    assert result.corpus == pytest.approx(3 / 4)
    assert diversity.distinct_n(["the the the"], 1).items == [pytest.approx(1 / 3)]
    assert diversity.distinct_n([""], 1).corpus is None


def test_self_bleu_equals_sacrebleu_against_the_others() -> None:
    rng = random.Random(7)
    vocab = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "on",
        "mat",
        "ran",
        "fast",
        "slow",
        "big",
        "small",
        "red",
        "blue",
        "house",
        "tree",
    ]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 14))) for _ in range(30)]
    texts += [texts[0], "completely unrelated words here"]
    result = diversity.self_bleu(texts)
    for i, text in enumerate(texts):
        expected = sacrebleu.sentence_bleu(text, texts[:i] + texts[i + 1 :]).score
        assert result.items[i] == pytest.approx(expected, abs=1e-9)
    assert result.items[0] == pytest.approx(100.0)  # its twin is among the others
    assert diversity.self_bleu(["only one"]).corpus is None


def test_self_bleu_lower_for_diverse_sets() -> None:
    same = ["the cat sat on the mat"] * 3 + ["the cat sat on a mat"]
    varied = ["the cat sat on the mat", "stock prices rose sharply", "we hiked up the hill", "rain is due at noon"]
    assert diversity.self_bleu(same).corpus > 80  # type: ignore[operator]
    assert diversity.self_bleu(varied).corpus < 20  # type: ignore[operator]


def test_near_duplicates() -> None:
    texts = [
        "The delivery arrived two days late and the box was damaged.",
        "the delivery arrived two days late, and the box was damaged!",  # same words, other case/punctuation
        "The delivery arrived two days late and the box was crushed.",  # one word differs
        "I love the new phone, its camera is excellent.",
        "",
    ]
    strict = diversity.near_duplicates(texts, 0.95)
    assert strict.corpus["pairs"] == [[0, 1, 1.0]]  # type: ignore[index]
    loose = diversity.near_duplicates(texts, 0.6)
    assert {(a, b) for a, b, _ in loose.corpus["pairs"]} == {(0, 1), (0, 2), (1, 2)}  # type: ignore[index]
    assert loose.items[3] is None
    assert loose.items[4] is None
    assert loose.items[2]["index"] in (0, 1)
    assert loose.corpus["duplicate_share"] == pytest.approx(3 / 5)  # type: ignore[index]


def test_near_duplicates_equals_brute_force() -> None:
    rng = random.Random(3)
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 9))) for _ in range(60)]
    texts += [texts[3], texts[3], texts[10].upper(), ""]  # exact repeats form groups
    sets = [diversity.shingles(t) for t in texts]
    for threshold in (0.0, 0.3, 0.5, 0.8, 1.0):
        expected: dict[tuple[int, int], float] = {}
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                union = len(sets[i] | sets[j])
                sim = len(sets[i] & sets[j]) / union if union else 0.0
                if sim > 0 and sim >= threshold:
                    expected[(i, j)] = sim
        result = diversity.near_duplicates(texts, threshold)
        found = result.corpus
        assert found["pair_count"] == len(expected), threshold  # type: ignore[index]
        assert {(a, b): s for a, b, s in found["pairs"]} == expected, threshold  # type: ignore[index]
        for i, item in enumerate(result.items):
            mine = [s for pair, s in expected.items() if i in pair]
            if item is None:
                assert not mine
            else:
                assert item["similarity"] == max(mine)
                assert expected[(min(i, item["index"]), max(i, item["index"]))] == item["similarity"]


def test_length_stats() -> None:
    result = diversity.length_stats(["one two three", "four", ""])
    assert result.items == [3, 1, 0]
    assert result.corpus == {
        "mean_words": pytest.approx(4 / 3),
        "median_words": 1,
        "std_words": pytest.approx(math.sqrt(((3 - 4 / 3) ** 2 + (1 - 4 / 3) ** 2 + (4 / 3) ** 2) / 3)),
        "min_words": 0,
        "max_words": 3,
        "mean_chars": pytest.approx(17 / 3),
        "empty": 1,
    }


# -- memorisation ------------------------------------------------------------------------------------

TRAINING = [
    "Patient John reported a persistent cough and mild fever that lasted for nearly two weeks before treatment.",
    "The quarterly revenue grew by twelve percent driven mostly by strong subscription sales in Europe.",
]


def test_memorisation_finds_copied_spans() -> None:
    copied = "Notes: patient John reported a persistent cough and mild fever that lasted for nearly two weeks."
    result = memorisation.memorisation([copied], TRAINING, 8)
    item = result.items[0]
    # "patient john ... two weeks" is 15 words, all in the training text.
    assert item["longest_span"] == 15
    assert item["copied_share"] == pytest.approx(8 / 9)  # 16 words -> 9 windows, the first one starts at "notes"
    assert result.corpus["items_with_copies"] == 1  # type: ignore[index]


def test_memorisation_negative_and_short_texts() -> None:
    fresh = "The patient reported a cough, and revenue grew in spring; nothing here is copied from the corpus."
    result = memorisation.memorisation([fresh, "too short"], TRAINING, 8)
    assert result.items == [{"copied_share": 0.0, "longest_span": 0}, {"copied_share": None, "longest_span": 0}]
    assert result.corpus == {"ngram": 8, "copied_share": 0.0, "longest_span": 0, "items_with_copies": 0}
    # A 7-word overlap is not a copy at n=8, and is at n=4.
    seven = "it grew by twelve percent driven mostly yes"
    assert memorisation.memorisation([seven], TRAINING, 8).items[0]["longest_span"] == 0
    assert memorisation.memorisation([seven], TRAINING, 4).items[0]["longest_span"] == 6


def test_memorisation_is_linear_with_a_stable_hash() -> None:
    index = memorisation.NgramIndex(["a b c d e f g h i j"], 4)
    assert len(index) == 7
    assert index.copied("x a b c d e y") == (4, 2, 5)
    with pytest.raises(ValueError):
        memorisation.NgramIndex([], 0)


# -- model-backed metrics' math, the registry ---------------------------------------------------------------


def test_cosine_and_embedding_similarity() -> None:
    assert cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    assert cosine([0, 0], [1, 1]) == 0.0
    result = embedding_similarity([[1, 0], [0, 1]], [[[0, 1], [1, 1]], [[0, 2]]])
    assert result.items == [pytest.approx(math.sqrt(0.5)), pytest.approx(1.0)]


def test_perplexity() -> None:
    assert perplexity([math.log(0.5)] * 4) == pytest.approx(2.0)
    assert perplexity([]) is None
    result = fluency([[math.log(0.5)], [math.log(0.25)] * 3, []])
    assert result.items == [pytest.approx(2.0), pytest.approx(4.0), None]
    assert result.corpus == pytest.approx(math.exp(-(math.log(0.5) + 3 * math.log(0.25)) / 4))


def test_selection_and_defaults() -> None:
    assert select_metrics(None, has_references=False, has_training=False, has_fluency_model=False) == list(
        DEFAULT_METRICS
    )
    with_refs = select_metrics(None, has_references=True, has_training=True, has_fluency_model=True)
    assert {"bleu", "chrf", "rougeL", "memorisation", "fluency"} <= set(with_refs)
    assert "embedding_similarity" not in with_refs  # costs tokens: only when asked for
    with pytest.raises(MetricSelectionError, match="known metrics: bleu") as err:
        select_metrics(["bleu", "nope"], has_references=True, has_training=False, has_fluency_model=False)
    assert err.value.code == "unknown_metric"
    with pytest.raises(MetricSelectionError) as err:
        select_metrics(["rouge2"], has_references=False, has_training=False, has_fluency_model=False)
    assert err.value.param == "references"
    with pytest.raises(MetricSelectionError) as err:
        select_metrics(["memorisation"], has_references=False, has_training=False, has_fluency_model=False)
    assert err.value.param == "training_texts"


def test_limits() -> None:
    long = " ".join(["word"] * 5000)
    with pytest.raises(MetricSelectionError, match="rougeL") as err:
        check_limits(["rougeL"], Inputs([long], [[long]]))
    assert err.value.code == "request_too_costly"
    check_limits(["rouge1"], Inputs([long], [[long]]))
    with pytest.raises(MetricSelectionError, match="fluency scores at most"):
        check_limits(["fluency"], Inputs(["x"] * 300))


def test_evaluate_every_cpu_metric() -> None:
    names = [n for n, m in METRICS.items() if m.source == "cpu"]
    inputs = Inputs(CANDIDATES, REFERENCES, TRAINING, 8, 0.8)
    report = evaluate(names, inputs)
    assert list(report.metrics) == names
    for name, result in report.metrics.items():
        assert len(result.items) == len(CANDIDATES), name
        assert headline(name, result) is not None or name == "memorisation", name
    assert report.pii == [[], [], [], []]
    assert report.flags == ["length: 1 of 4 candidates are empty"]
    with pytest.raises(ValueError, match="scored by a model"):
        evaluate(["fluency"], inputs)
