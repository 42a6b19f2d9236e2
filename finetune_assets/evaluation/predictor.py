"""An engagement predictor fitted on historical posts: scores any text without showing it to users.

Hashed word and bigram features, ridge regression on the empirical log-odds of each post's engagement rate,
weighted by impressions. It is a learned proxy: it never sees the simulation's hidden model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORER_VERSION = "ridge-hashed-ngrams-v1"


@dataclass
class EngagementPredictor:
    vectorizer: Any
    model: Any
    n_posts: int
    version: str = SCORER_VERSION
    """The scorer and the data it was fitted on: part of every cached score's key."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        logits = self.model.predict(self.vectorizer.transform(list(texts)))
        return 1.0 / (1.0 + np.exp(-logits))

    def mean(self, texts: Sequence[str]) -> float:
        return float(self.predict(texts).mean()) if texts else 0.0


MIN_HISTORY_POSTS = 20


def _usable(rows: Iterable[tuple[str, int, int]]) -> Iterator[tuple[str, int, int]]:
    return ((text, i, e) for text, i, e in rows if i > 0 and text)


def predictor_version(rows: Sequence[tuple[str, int, int]], alpha: float) -> str:
    """`SCORER_VERSION:<hash of the fit's inputs>`: same rows and alpha, same predictor."""
    digest = hashlib.sha256(json.dumps([SCORER_VERSION, alpha, list(rows)], ensure_ascii=False).encode())
    return f"{SCORER_VERSION}:{digest.hexdigest()[:20]}"


def fit_predictor(rows: Iterable[tuple[str, int, int]], *, alpha: float = 3.0) -> EngagementPredictor:
    """Rows are (completion, impressions, engagements) of organic posts with enough impressions."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import Ridge

    rows = list(rows)
    texts, targets, weights = [], [], []
    for text, impressions, engagements in _usable(rows):
        rate = (engagements + 0.5) / (impressions + 1.0)
        texts.append(text)
        targets.append(np.log(rate / (1 - rate)))
        weights.append(np.sqrt(impressions))
    if len(texts) < MIN_HISTORY_POSTS:
        raise ValueError(f"engagement predictor: {len(texts)} historical posts; expected at least {MIN_HISTORY_POSTS}")
    vectorizer = HashingVectorizer(n_features=2**16, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    model = Ridge(alpha=alpha)
    model.fit(vectorizer.transform(texts), np.array(targets), sample_weight=np.array(weights))
    return EngagementPredictor(vectorizer, model, len(texts), predictor_version(rows, alpha))


class LazyPredictor:
    """The predictor for `rows`, fitted on first use: a fully cached evaluation never fits it.

    `version` names the scorer *and* the data it is fitted on (a hash of the rows), so a cached score is
    reused only for the same fit: new history means new keys.
    """

    def __init__(self, rows: Iterable[tuple[str, int, int]], *, alpha: float = 3.0) -> None:
        self.rows = list(rows)
        self.alpha = alpha
        self.n_posts = sum(1 for _ in _usable(self.rows))
        if self.n_posts < MIN_HISTORY_POSTS:
            raise ValueError(
                f"engagement predictor: {self.n_posts} historical posts; expected at least {MIN_HISTORY_POSTS}"
            )
        self.version = predictor_version(self.rows, alpha)
        self.fits = 0
        self._fitted: EngagementPredictor | None = None

    def fitted(self) -> EngagementPredictor:
        if self._fitted is None:
            self._fitted = fit_predictor(self.rows, alpha=self.alpha)
            self.fits += 1
        return self._fitted

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.fitted().predict(texts)

    def mean(self, texts: Sequence[str]) -> float:
        return float(self.predict(texts).mean()) if texts else 0.0
