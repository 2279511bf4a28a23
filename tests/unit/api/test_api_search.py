"""BM25 ranking of session documents."""

from __future__ import annotations

import math

from voice_gateway.api.search import K1, B, rank, tokenize

CORPUS = [
    "Opening hours: the shop opens at 9 and closes at 17 on weekdays.",
    "Refund policy: a refund is issued within 14 days when the receipt is shown.",
    "Shipping: orders ship within 2 days; the shop ships worldwide.",
    "Warranty: two years on every device bought in the shop.",
]


def order(query: str, corpus: list[str] = CORPUS) -> list[int]:
    return [hit.index for hit in rank(corpus, query)]


def test_tokens_are_lowercased_words_without_punctuation() -> None:
    assert tokenize("Refund-policy, v2! It's DONE_now") == [
        "refund",
        "policy",
        "v2",
        "it",
        "s",
        "done",
        "now",
    ]
    assert tokenize("Rückerstattung für Ärzte") == ["rückerstattung", "für", "ärzte"]
    assert tokenize("... !!! ---") == []


def test_the_obviously_relevant_document_ranks_first() -> None:
    assert order("how do I get a refund?")[0] == 1
    assert order("shop opening hours")[0] == 0
    assert order("WARRANTY")[0] == 3


def test_a_rare_term_outweighs_a_common_one() -> None:
    # "shop" is in three documents, "receipt" in one: the receipt document wins.
    corpus = [
        "shop shop",
        "receipt",
        "the shop is here",
        "shop hours",
    ]
    hits = rank(corpus, "shop receipt")
    assert hits[0].index == 1
    assert {h.index for h in hits} == {0, 1, 2, 3}


def test_shorter_documents_win_for_the_same_term_frequency() -> None:
    short = "refund"
    long = "refund " + " ".join(f"filler{i}" for i in range(30))
    hits = rank([long, short], "refund")
    assert [h.index for h in hits] == [1, 0]
    assert hits[0].score > hits[1].score


def test_more_occurrences_score_higher_but_saturate() -> None:
    docs = ["refund x x x", "refund refund x x", "refund refund refund x"]  # same length
    scores = [h.score for h in sorted(rank(docs, "refund"), key=lambda h: h.index)]
    assert scores[0] < scores[1] < scores[2]
    assert scores[2] - scores[1] < scores[1] - scores[0]  # diminishing returns (k1)
    assert scores[2] < scores[0] * (K1 + 1)  # never more than (k1 + 1) times one occurrence


def test_scores_match_the_bm25_formula() -> None:
    docs = ["a b", "a c c"]
    n_docs, avg = 2, 2.5
    idf_c = math.log(1 + (n_docs - 1 + 0.5) / (1 + 0.5))
    expected = idf_c * 2 * (K1 + 1) / (2 + K1 * (1 - B + B * 3 / avg))
    (hit,) = rank(docs, "c")
    assert hit.index == 1 and math.isclose(hit.score, expected)


def test_a_term_in_every_document_still_scores_positive() -> None:
    hits = rank(["the cat", "the dog"], "the")
    assert len(hits) == 2 and all(h.score > 0 for h in hits)


def test_no_match_no_query_no_corpus_give_nothing() -> None:
    assert rank(CORPUS, "helicopter") == []
    assert rank(CORPUS, "?!") == []
    assert rank([], "refund") == []


def test_equal_scores_keep_corpus_order_and_repeated_query_words_do_not_count_twice() -> None:
    docs = ["alpha beta", "beta alpha", "alpha beta"]
    assert order("alpha", docs) == [0, 1, 2]
    assert [h.score for h in rank(docs, "alpha alpha beta")] == [
        h.score for h in rank(docs, "alpha beta")
    ]


def test_limit_keeps_the_best() -> None:
    assert [h.index for h in rank(CORPUS, "shop", limit=2)] == order("shop")[:2]
