"""The hidden engagement model rewards the lexical styles a tiny model can learn, and is calibrated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from finetune_assets.simulation import (
    GOOD_STYLES,
    SIMULATION_LABEL,
    DemoWorldConfig,
    HiddenEngagementModel,
    make_prompt,
    world_users,
    write_post,
)

from .helpers import classify

PLAIN = "Our shop is open on Saturday as usual and we have fresh bread, coffee and cakes for everyone."
GOOD = (
    "Ever wondered why sourdough takes two days? Our slow-rise dough is the secret. "
    "Tell us in the comments! 🔥 #Sourdough #Bakery"
)


@pytest.fixture(scope="module")
def hidden() -> HiddenEngagementModel:
    return HiddenEngagementModel()


def test_label_says_simulated() -> None:
    assert "simulated" in SIMULATION_LABEL and "demo stand-in" in SIMULATION_LABEL


@pytest.mark.parametrize(
    ("text", "feature"),
    [
        ("Ever wondered why our bread is so good? We bake it every morning before sunrise.", "question_hook"),
        ("3 ways to enjoy cold brew:\n1. Over ice\n2. With oat milk\n3. With a cinnamon bun", "list_opener"),
        ("Fresh croissants are out of the oven this morning, come early 🥐 and grab one", "emoji_sweet_spot"),
        (
            "Fresh croissants are out of the oven this morning, come early 🥐🔥🎉✨🚀 and grab one",
            "emoji_overload",
        ),
        ("Fresh croissants are out of the oven this morning. Tag a friend who loves them.", "call_to_action"),
        ("Fresh croissants are out of the oven this morning, come early #Bakery #Fresh", "hashtags_moderate"),
        ("Fresh croissants are out of the oven today #a #b #c #d #e #f", "hashtag_spam"),
        ("Open today.", "too_short"),
        (" ".join(["Our bakery has many different breads and pastries for you"] * 12), "long"),
        ("HUGE NEWS TODAY!!! FRESH BREAD IS FINALLY HERE FOR EVERYONE!!!", "shouting"),
        ("HUGE NEWS TODAY!!! FRESH BREAD IS FINALLY HERE FOR EVERYONE!!!", "exclamation_runs"),
        ("bread ## ))) $$$ 12 34 %% ^^ && ** ~~ 99 ;; '' bread", "garbled"),
        (" ".join(["bread is good"] * 10), "repetitive"),
        ("   ", "empty"),
        ("", "empty"),
    ],
)
def test_each_feature_fires(hidden: HiddenEngagementModel, text: str, feature: str) -> None:
    assert feature in hidden.features(text)


def test_plain_text_has_no_features(hidden: HiddenEngagementModel) -> None:
    assert hidden.features(PLAIN) == {}
    assert hidden.text_logit(PLAIN) == 0.0


def test_text_logit_is_deterministic_and_sums_features(hidden: HiddenEngagementModel) -> None:
    assert hidden.text_logit(GOOD) == hidden.text_logit(GOOD) == sum(hidden.features(GOOD).values())
    assert set(hidden.features(GOOD)) == {
        "question_hook",
        "emoji_sweet_spot",
        "call_to_action",
        "hashtags_moderate",
    }


def test_probability_is_monotone_and_bounded(hidden: HiddenEngagementModel) -> None:
    for text in (GOOD, PLAIN, ""):
        ps = [hidden.probability(text, effect) for effect in (-2.0, 0.0, 2.0)]
        assert all(0.0 < p < 1.0 for p in ps)
        assert ps[0] < ps[1] < ps[2]
    assert hidden.probability(GOOD, 0.0) > hidden.probability(PLAIN, 0.0) > hidden.probability("", 0.0)


def test_good_style_text_beats_the_corpus_average(
    hidden: HiddenEngagementModel, default_corpus: list[dict[str, Any]]
) -> None:
    """Posts written only in the good styles, by the corpus's own users, engage >= 20 % more (relative)."""
    clean = [row for row, kind in zip(default_corpus, classify(default_corpus), strict=True) if kind is None]
    corpus_mean = float(np.mean([row["engagements"] / row["impressions"] for row in clean]))
    rng = np.random.default_rng(11)
    users = world_users(DemoWorldConfig())
    good_writer = dict.fromkeys(GOOD_STYLES, 1.0)
    probabilities = []
    for i in range(600):
        user = users[i % len(users)]
        text = write_post(make_prompt(user, rng), rng, style_weights=good_writer)
        probabilities.append(hidden.probability(text, user.effect))
    good_mean = float(np.mean(probabilities))
    assert good_mean >= 1.2 * corpus_mean, (good_mean, corpus_mean)
    assert hidden.probability(GOOD, 0.0) >= 1.2 * corpus_mean
