"""An engagement predictor fitted on historical posts: scores any text without showing it to users.

Hashed word and bigram features, ridge regression on the empirical log-odds of each post's engagement rate,
weighted by impressions. It is a learned proxy: it never sees the simulation's hidden model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORER_VERSION = "ridge-hashed-ngrams-v1"


@dataclass
class EngagementPredictor:
    vectorizer: Any
    model: Any
    n_posts: int

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        logits = self.model.predict(self.vectorizer.transform(list(texts)))
        return 1.0 / (1.0 + np.exp(-logits))

    def mean(self, texts: Sequence[str]) -> float:
        return float(self.predict(texts).mean()) if texts else 0.0


def fit_predictor(rows: Iterable[tuple[str, int, int]], *, alpha: float = 3.0) -> EngagementPredictor:
    """Rows are (completion, impressions, engagements) of organic posts with enough impressions."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import Ridge

    texts, targets, weights = [], [], []
    for text, impressions, engagements in rows:
        if impressions <= 0 or not text:
            continue
        rate = (engagements + 0.5) / (impressions + 1.0)
        texts.append(text)
        targets.append(np.log(rate / (1 - rate)))
        weights.append(np.sqrt(impressions))
    if len(texts) < 20:
        raise ValueError(f"engagement predictor: {len(texts)} historical posts; expected at least 20")
    vectorizer = HashingVectorizer(n_features=2**16, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    model = Ridge(alpha=alpha)
    model.fit(vectorizer.transform(texts), np.array(targets), sample_weight=np.array(weights))
    return EngagementPredictor(vectorizer=vectorizer, model=model, n_posts=len(texts))
