"""The demo world's people and voice: users, their prompts and the historical "production" writer.

SIMULATION ONLY (see `SIMULATION_LABEL`): topics, brands and phrase banks are invented stand-ins. The writer
mixes styles; only a minority (~30 %) are the lexical styles the hidden engagement model rewards, so the posts
that clear the platform's training threshold over-represent them and a model fine-tuned on those posts has
something real and learnable to pick up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Message = dict[str, str]

STYLES: tuple[str, ...] = ("question", "list", "emoji_hype", "story", "announcement", "essay", "shouty")
GOOD_STYLES: tuple[str, ...] = ("question", "list", "emoji_hype")
"""The styles built from the features the hidden engagement model rewards."""

HISTORICAL_STYLE_WEIGHTS: Mapping[str, float] = {
    "question": 0.11,
    "list": 0.09,
    "emoji_hype": 0.08,
    "story": 0.23,
    "announcement": 0.26,
    "essay": 0.13,
    "shouty": 0.10,
}
"""The historical production writer's style mix: good styles are 28 % of it."""


@dataclass(frozen=True)
class _Category:
    kind: str
    brand_nouns: tuple[str, ...]
    audience: str
    topics: tuple[str, ...]
    things: tuple[str, ...]


_CATEGORIES: tuple[_Category, ...] = (
    _Category(
        "a neighbourhood coffee shop",
        ("Coffee", "Roasters", "Espresso Bar"),
        "regulars",
        ("our new cold brew", "the autumn menu", "latte art classes", "single-origin beans"),
        (
            "oat milk flat whites",
            "a warm cinnamon bun",
            "the morning rush",
            "freshly roasted beans",
            "our barista team",
            "a quiet corner table",
        ),
    ),
    _Category(
        "a local fitness studio",
        ("Fitness", "Strength Lab", "Gym"),
        "members",
        ("morning workouts", "the new spin class", "recovery days", "strength training for beginners"),
        (
            "a short warm-up",
            "foam rolling",
            "proper hydration",
            "a training buddy",
            "our coaches",
            "a proper rest day",
        ),
    ),
    _Category(
        "an independent bookstore",
        ("Books", "Bookshop", "Reading Room"),
        "readers",
        ("the summer reading list", "our book club", "local authors", "signed first editions"),
        (
            "a rainy afternoon",
            "staff picks",
            "a cozy armchair",
            "short story collections",
            "author readings",
            "gift cards",
        ),
    ),
    _Category(
        "a family bakery",
        ("Bakery", "Bakehouse", "Patisserie"),
        "customers",
        ("sourdough Saturdays", "the holiday cake menu", "gluten-free pastries", "baking workshops"),
        (
            "a crusty loaf",
            "seasonal fruit tarts",
            "butter croissants",
            "our slow-rise dough",
            "custom birthday cakes",
            "fresh rye bread",
        ),
    ),
    _Category(
        "a bike repair shop",
        ("Cycles", "Bike Works", "Wheelhouse"),
        "riders",
        ("spring tune-ups", "commuting by bike", "e-bike test rides", "group rides"),
        (
            "the right tyre pressure",
            "a clean chain",
            "bright night lights",
            "our mechanics",
            "a good rain jacket",
            "quiet weekend routes",
        ),
    ),
    _Category(
        "a plant nursery",
        ("Plants", "Greenhouse", "Garden Co."),
        "plant lovers",
        ("houseplant care", "the spring seedling sale", "balcony gardens", "repotting day"),
        (
            "bright indirect light",
            "a pot with good drainage",
            "monstera cuttings",
            "weekly watering",
            "fresh compost",
            "herb planters",
        ),
    ),
    _Category(
        "a small software startup",
        ("Labs", "Software", "Cloud"),
        "users",
        ("our latest release", "keyboard shortcuts", "the public roadmap", "team productivity"),
        (
            "dark mode",
            "faster sync",
            "the new dashboard",
            "offline support",
            "shared workspaces",
            "the mobile app",
        ),
    ),
    _Category(
        "a travel agency",
        ("Travel", "Journeys", "Trips"),
        "travellers",
        ("weekend city breaks", "off-season travel", "packing light", "family holidays"),
        (
            "a carry-on only trip",
            "early morning trains",
            "local food markets",
            "travel insurance",
            "a flexible ticket",
            "hidden beaches",
        ),
    ),
)
_CATEGORY_BY_TOPIC: dict[str, _Category] = {topic: cat for cat in _CATEGORIES for topic in cat.topics}
_CATEGORY_BY_KIND: dict[str, _Category] = {cat.kind: cat for cat in _CATEGORIES}
_BRAND_NAMES = (
    "Northwind",
    "Bluebird",
    "Maple",
    "Harbor",
    "Juniper",
    "Cedar",
    "Copper",
    "Riverside",
    "Lantern",
    "Willow",
    "Summit",
    "Pebble",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_EMOJIS = ("🚀", "🔥", "✨", "🎉", "💡", "🙌", "🌟", "💪", "☕", "🌱")
_CTAS = (
    "Tell us in the comments!",
    "Comment below with your favourite.",
    "Tag a friend who needs this.",
    "Share this with someone who would love it.",
    "Save this for later.",
    "Let us know what you think!",
)
_QUESTION_HOOKS = (
    "Ever wondered why {topic} matters?",
    "What if {topic} could make your week better?",
    "Did you know {thing} changes everything?",
    "Looking for a reason to try {topic}?",
    "Have you tried {thing} yet?",
)
_LIST_OPENERS = (
    "{n} ways to enjoy {topic}:",
    "{n} tips for {topic}:",
    "{n} reasons to love {topic}:",
    "{n} things we love about {topic}:",
)
_HYPE_OPENERS = (
    "Big news: {topic} is here!",
    "New this week: {thing}!",
    "You asked, we listened: {topic}!",
    "It is finally happening: {topic}!",
)
_FILLER = (
    "We have been working on {topic} for a while and it finally feels right.",
    "Come by this week and see {thing} for yourself.",
    "Our {audience} keep asking about {thing}, so here it is.",
    "It is a small change, but {thing} makes a real difference.",
    "Thanks to everyone who helped us get {topic} ready.",
    "The whole {brand} team is here for you all week.",
    "We think you will like {thing}.",
    "All the details are on our website.",
)
_ESSAY = (
    "{brand} has always believed that {topic} deserves careful thought and patience.",
    "When we started out, we did not really know how much {thing} would matter to our {audience}.",
    "Over the years we have tried many approaches, some of which worked and many of which did not.",
    "What we learned is that consistency beats intensity, and that small habits add up over time.",
    "There is a lot of advice out there, and much of it contradicts itself in confusing ways.",
    "Our view is simple: start with {thing}, pay attention, and adjust as you go along.",
    "We also think it is important to be honest about what we still do not know.",
    "Every season brings new questions, and we try to answer them as openly as we can.",
    "None of this would be possible without the community that has grown around {topic}.",
    "We will keep sharing what we learn here, in longer notes like this one, from time to time.",
)
_GENERIC_TAGS = (
    "#SmallBusiness",
    "#ShopLocal",
    "#Weekend",
    "#Tips",
    "#Community",
    "#NewIn",
    "#MondayMotivation",
    "#Love",
    "#InstaGood",
    "#Follow",
)
_PROMPT_TOPIC = re.compile(r"about (.+?) for our ([^.]+)\.")
_PROMPT_MENTION = re.compile(r"Mention (.+?)\.$")
_PROMPT_BRAND = re.compile(r"posts for (.+?), (an? .+?)\.")


@dataclass(frozen=True)
class DemoUser:
    """A simulated account (demo stand-in for a real user).

    `effect` is the user's log-odds shift on engagement (audience size/loyalty the text cannot change);
    `activity` is a relative posting rate with mean 1.
    """

    user_id: str
    effect: float
    activity: float
    brand: str
    topics: tuple[str, ...]


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def make_users(n: int, rng: np.random.Generator) -> list[DemoUser]:
    """`n` simulated users: effect ~ N(0, 0.4), lognormal activity with mean 1, 2-3 topics of one brand."""
    users: list[DemoUser] = []
    for i in range(n):
        category = _CATEGORIES[int(rng.integers(len(_CATEGORIES)))]
        brand = f"{pick(rng, _BRAND_NAMES)} {pick(rng, category.brand_nouns)}"
        n_topics = int(rng.integers(2, 4))
        topic_idx = rng.choice(len(category.topics), size=n_topics, replace=False)
        users.append(
            DemoUser(
                user_id=f"demo-user-{i + 1:04d}",
                effect=float(rng.normal(0.0, 0.4)),
                activity=float(rng.lognormal(-0.18, 0.6)),
                brand=brand,
                topics=tuple(category.topics[int(j)] for j in topic_idx),
            )
        )
    return users


def make_prompt(user: DemoUser, rng: np.random.Generator) -> list[Message]:
    """A short system + user prompt, as the content app sends them (well inside a 256-token context)."""
    topic = pick(rng, user.topics)
    category = _CATEGORY_BY_TOPIC[topic]
    request = f"Write a short post about {topic} for our {category.audience}."
    if rng.random() < 0.5:
        request += f" Mention {pick(rng, category.things)}."
    return [
        {
            "role": "system",
            "content": f"You write engaging social posts for {user.brand}, {category.kind}. Keep it short.",
        },
        {"role": "user", "content": request},
    ]


@dataclass(frozen=True)
class _Slots:
    topic: str
    brand: str
    audience: str
    things: tuple[str, ...]

    def fill(self, template: str, thing_index: int = 0) -> str:
        return template.format(
            topic=self.topic,
            brand=self.brand,
            audience=self.audience,
            thing=self.things[thing_index % len(self.things)],
        )


def _parse_prompt(prompt: Sequence[Mapping[str, str]], rng: np.random.Generator) -> _Slots:
    """Recover topic, brand and vocabulary from the prompt text; free-form prompts get generic slots."""
    system = next((m.get("content", "") for m in prompt if m.get("role") == "system"), "")
    user = next((m.get("content", "") for m in prompt if m.get("role") == "user"), "")
    brand_match = _PROMPT_BRAND.search(system)
    topic_match = _PROMPT_TOPIC.search(user)
    brand = brand_match.group(1) if brand_match else "our team"
    topic = topic_match.group(1) if topic_match else "our latest news"
    category = _CATEGORY_BY_TOPIC.get(topic) or (_CATEGORY_BY_KIND.get(brand_match.group(2)) if brand_match else None)
    if category is None:
        category = _CATEGORIES[int(rng.integers(len(_CATEGORIES)))]
    order = rng.permutation(len(category.things))
    things = [category.things[int(i)] for i in order]
    mention = _PROMPT_MENTION.search(user)
    if mention:
        things = [mention.group(1)] + [t for t in things if t != mention.group(1)]
    audience = topic_match.group(2) if topic_match else category.audience
    return _Slots(topic=topic, brand=brand, audience=audience, things=tuple(things))


def _sentences(slots: _Slots, rng: np.random.Generator, pool: Sequence[str], k: int, first_thing: int) -> list[str]:
    """`k` distinct sentences from `pool`, each naming the next unused thing (so a mention is never lost)."""
    out: list[str] = []
    thing = first_thing
    for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False):
        template = pool[int(i)]
        out.append(slots.fill(template, thing_index=thing))
        thing += "{thing}" in template
    return out


def _opener(slots: _Slots, rng: np.random.Generator, templates: Sequence[str]) -> tuple[str, int]:
    """A filled opener and the index of the first thing it left unused."""
    template = pick(rng, templates)
    return slots.fill(template), int("{thing}" in template)


def _emojis(rng: np.random.Generator, low: int, high: int) -> str:
    return "".join(pick(rng, _EMOJIS) for _ in range(int(rng.integers(low, high + 1))))


def _hashtags(slots: _Slots, rng: np.random.Generator, spam: bool = False) -> str:
    """0, 1-3 or 6-8 hashtags; `spam` forces 6-8."""
    draw = 1.0 if spam else rng.random()
    if draw < 0.5:
        return ""
    n = int(rng.integers(1, 4)) if draw < 0.88 else int(rng.integers(6, 9))
    topic_tag = "#" + "".join(w.capitalize() for w in re.findall(r"[A-Za-z]+", slots.topic) if w not in ("our", "the"))
    brand_tag = "#" + "".join(re.findall(r"[A-Za-z]+", slots.brand))
    tags = [topic_tag, brand_tag, *(_GENERIC_TAGS[int(i)] for i in rng.permutation(len(_GENERIC_TAGS)))]
    return " ".join(tags[:n])


def _write(style: str, slots: _Slots, rng: np.random.Generator) -> str:
    """One post in `style`: fixed hook phrases and templates, so a tiny model can copy what works."""
    parts: list[str]
    if style == "question":
        hook, used = _opener(slots, rng, _QUESTION_HOOKS)
        parts = [hook, *_sentences(slots, rng, _FILLER, int(rng.integers(1, 3)), used)]
        if rng.random() < 0.7:
            parts.append(pick(rng, _CTAS))
        if rng.random() < 0.6:
            parts.append(_emojis(rng, 1, 2))
    elif style == "list":
        n = 3 if rng.random() < 0.7 else 5
        items = "\n".join(f"{i + 1}. {slots.things[i % len(slots.things)].capitalize()}" for i in range(n))
        parts = [pick(rng, _LIST_OPENERS).format(n=n, topic=slots.topic), items]
        if rng.random() < 0.6:
            parts.append(pick(rng, _CTAS))
        if rng.random() < 0.5:
            parts.append(_emojis(rng, 1, 2))
        return "\n".join(p for p in [*parts, _hashtags(slots, rng)] if p)
    elif style == "emoji_hype":
        overload = rng.random() < 0.2
        lead = _emojis(rng, 3, 4) if overload else _emojis(rng, 1, 1)
        tail = _emojis(rng, 2, 3) if overload else (_emojis(rng, 1, 1) if rng.random() < 0.5 else "")
        hype, used = _opener(slots, rng, _HYPE_OPENERS)
        parts = [
            f"{lead} {hype} {tail}".strip(),
            *_sentences(slots, rng, _FILLER, int(rng.integers(1, 3)), used),
        ]
        if rng.random() < 0.8:
            parts.append(pick(rng, _CTAS))
    elif style == "story":
        parts = [
            f"Last {pick(rng, _DAYS)}, one of our {slots.audience} stopped by and asked about {slots.things[0]}.",
            f"We ended up talking for an hour about {slots.topic}.",
            f"{slots.things[1].capitalize()} came up too, of course.",
            *_sentences(slots, rng, _FILLER, int(rng.integers(1, 3)), 2),
        ]
        if rng.random() < 0.15:
            parts.append(pick(rng, _CTAS))
    elif style == "announcement":
        parts = [
            f"{slots.brand} update: {slots.topic}.",
            f"Starting {pick(rng, _DAYS)}, {slots.things[0]} will be available.",
            *_sentences(slots, rng, _FILLER, int(rng.integers(1, 3)), 1),
        ]
        if rng.random() < 0.1:
            parts.append(pick(rng, _CTAS))
    elif style == "essay":
        parts = [slots.fill(_ESSAY[0]), *_sentences(slots, rng, _ESSAY[1:], int(rng.integers(6, 10)), 0)]
    elif style == "shouty":
        parts = [
            f"HUGE NEWS!!! {slots.topic.upper()} IS FINALLY HERE!!!",
            f"DON'T MISS {slots.things[0].upper()}!!!",
            pick(rng, ("COME IN TODAY!!!", "ONLY THIS WEEK!!!", "YOU WILL LOVE IT!!!")),
        ]
        return " ".join([*parts, _hashtags(slots, rng, spam=rng.random() < 0.7)]).strip()
    else:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    return " ".join(p for p in [*parts, _hashtags(slots, rng)] if p)


def write_post(
    prompt: Sequence[Mapping[str, str]],
    rng: np.random.Generator,
    *,
    style_weights: Mapping[str, float] | None = None,
) -> str:
    """The historical "production model": one post for `prompt`, in a style drawn from `style_weights`.

    The default is the historical mix (`HISTORICAL_STYLE_WEIGHTS`); pass e.g. `{s: 1 for s in GOOD_STYLES}`
    to simulate a writer that has learned what the audience rewards.
    """
    weights = HISTORICAL_STYLE_WEIGHTS if style_weights is None else style_weights
    names = [s for s, w in weights.items() if w > 0]
    if not names:
        raise ValueError("style_weights needs at least one positive weight")
    p = np.array([weights[s] for s in names], dtype=float)
    style = names[int(rng.choice(len(names), p=p / p.sum()))]
    return _write(style, _parse_prompt(prompt, rng), rng)
