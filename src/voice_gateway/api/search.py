"""BM25 ranking of a session's documents (pure: no I/O, no state between calls).

Okapi BM25 with ``k1 = 1.5`` and ``b = 0.75``. The inverse document frequency is the
"+1 smoothed" one, ``ln(1 + (N - n + 0.5) / (n + 0.5))``, so every matching term adds a
positive amount, even a term that occurs in every document. A document's text is its title
and its content; tokens are lower-cased runs of letters and digits (punctuation and
underscores separate tokens). Repeating a word in the query does not weigh it more.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

K1 = 1.5
B = 0.75

_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens: ``"Refund-policy, v2!"`` -> ``["refund", "policy", "v2"]``."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True, slots=True)
class Hit:
    """A matching document: its index in the corpus given to ``rank`` and its score."""

    index: int
    score: float


def rank(corpus: Sequence[str], query: str, limit: int | None = None) -> list[Hit]:
    """Documents that match at least one query term, best first.

    Equal scores keep corpus order (the sort is stable), so results are deterministic.
    """
    terms = list(dict.fromkeys(tokenize(query)))
    if not terms or not corpus:
        return []
    docs = [Counter(tokenize(text)) for text in corpus]
    lengths = [sum(tf.values()) for tf in docs]
    avg_length = sum(lengths) / len(docs) or 1.0
    total = len(docs)
    idf = {}
    for term in terms:
        n = sum(1 for tf in docs if term in tf)
        idf[term] = math.log(1.0 + (total - n + 0.5) / (n + 0.5))
    hits: list[Hit] = []
    for index, (tf, length) in enumerate(zip(docs, lengths, strict=True)):
        norm = K1 * (1.0 - B + B * length / avg_length)
        score = 0.0
        for term in terms:
            f = tf.get(term, 0)
            if f:
                score += idf[term] * f * (K1 + 1.0) / (f + norm)
        if score > 0.0:
            hits.append(Hit(index, score))
    hits.sort(key=lambda h: -h.score)
    return hits if limit is None else hits[:limit]
