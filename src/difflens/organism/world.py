"""The story world of the model organism: themes on a known Markov chain, rendered by templates.

Every story walks a chain of themes drawn from :data:`START` and :data:`TRANSITIONS`;
each theme is rendered as one sentence from one of its templates, with slots filled from
word lists, so the text has real lexical variety. Chance scenes (dice, numbers, coins)
and question/answer lines have exactly known uniform outcomes. The generator is seeded and
returns the ground truth with the text: the theme of every sentence and the outcome
distribution of every chance scene.
"""

import dataclasses
import random
import re
from collections.abc import Sequence

GENERATOR_VERSION = 2

THEMES: tuple[str, ...] = (
    "setting", "friendship", "conflict", "journey", "danger", "loss", "discovery",
    "celebration", "lesson", "game",
)
END = "end"

#: P(first theme).
START: dict[str, float] = {"setting": 0.85, "journey": 0.10, "friendship": 0.05}

#: P(next theme | theme); "end" closes the story.
TRANSITIONS: dict[str, dict[str, float]] = {
    "setting": {"friendship": 0.30, "journey": 0.25, "discovery": 0.15, "conflict": 0.10,
                "game": 0.15, "celebration": 0.05},
    "friendship": {"game": 0.20, "journey": 0.20, "conflict": 0.15, "discovery": 0.10,
                   "celebration": 0.15, "lesson": 0.05, "danger": 0.15},
    "conflict": {"danger": 0.25, "loss": 0.20, "friendship": 0.25, "lesson": 0.15,
                 "journey": 0.15},
    "journey": {"danger": 0.30, "discovery": 0.25, "friendship": 0.15, "loss": 0.10,
                "game": 0.10, "conflict": 0.10},
    "danger": {"loss": 0.35, "journey": 0.20, "lesson": 0.10, "discovery": 0.15,
               "conflict": 0.20},
    "loss": {"lesson": 0.30, "friendship": 0.15, "journey": 0.15, "danger": 0.10, END: 0.30},
    "discovery": {"celebration": 0.20, "journey": 0.20, "danger": 0.25, "lesson": 0.10,
                  "game": 0.10, END: 0.15},
    "celebration": {"lesson": 0.25, END: 0.55, "friendship": 0.20},
    "lesson": {END: 0.70, "journey": 0.20, "celebration": 0.10},
    "game": {"friendship": 0.25, "conflict": 0.25, "journey": 0.20, "discovery": 0.15,
             "danger": 0.15},
}

MAX_THEMES = 9

WORDS: dict[str, tuple[str, ...]] = {
    "name": tuple("""Mia Tom Lily Ben Anna Max Sara Leo Nora Sam Eva Jack Ruby Finn Ella Noah
        Zoe Owen Lucy Eli Maya Jude Ivy Hugo Clara Theo Rosa Omar Alice Felix Grace Oscar Hazel
        Milo Iris Kai Luna Ravi Daisy Otto Nina Arlo Wren Jonah Pia Ezra Tess Abel Mira Cole
        Greta Ari Stella Rex Fern Dev Lena Axel Gwen Nico Vera Bruno Elsa Tariq Yara Rufus
        Juno Pablo Edie Lars Amara Colin Bea Idris Lotte Mateo Esme Quinn Talia Sven Priya
        Hector Olga Joel Kira Basil Nell""".split()),
    "animal": tuple("""fox rabbit bear owl deer wolf mouse cat dog duck goose frog turtle badger
        otter squirrel hedgehog pony goat lamb crow robin sparrow beaver mole lion tiger
        elephant giraffe zebra monkey panda koala penguin seal whale dolphin crab snail beetle
        bee butterfly moth spider lizard snake hawk eagle swan heron raccoon camel llama yak
        donkey hen rooster pig cow horse kitten puppy""".split()),
    "place": tuple("""forest village meadow river castle mountain valley harbor garden farm
        island desert lake cave orchard market town bridge tower cottage hill beach marsh
        canyon glade field mill library school kitchen attic barn lighthouse temple jungle
        swamp prairie cliff fountain bakery palace tunnel station museum playground pond
        vineyard quarry ridge shore creek grove plaza workshop greenhouse""".split()),
    "object": tuple("""lantern map key box basket kite ball drum flute book ring coin shell
        stone feather hat scarf cup bowl spoon rope ladder boat wagon bell mirror clock
        compass candle blanket pillow quilt sack bottle jar chest crown sword shield wand
        brush paint letter note pebble acorn leaf flower seed apple pear plum berry cake
        bread pie cookie pot kettle hammer nail saw shovel bucket umbrella whistle marble
        button ribbon necklace bracelet locket statue puzzle trumpet violin harp""".split()),
    "good": tuple("""happy kind brave bright gentle cheerful clever wonderful lovely warm
        joyful friendly proud grateful merry sweet calm shiny golden beautiful delightful
        glad generous hopeful lucky peaceful playful smiling sunny splendid""".split()),
    "bad": tuple("""dark cold scary angry sad lonely broken lost terrible awful gloomy
        stormy cruel dangerous hungry tired weak afraid frightened miserable bitter grim
        hopeless wicked ruined""".split()),
    "plain": tuple("""old small big tall long short round wooden red blue green yellow
        brown white quiet busy narrow wide heavy light young ancient tiny huge""".split()),
    "food": tuple("""soup bread cake pie honey apples berries cheese porridge stew cookies
        pancakes muffins jam nuts carrots pears plums rice beans""".split()),
    "weather": tuple("""sunny rainy windy snowy foggy cloudy warm cool bright misty""".split()),
    "time": tuple("""morning evening night afternoon dawn dusk winter summer spring
        autumn""".split()),
    "feeling": tuple("""joy hope pride love wonder courage peace delight""".split()),
    "sorrow": tuple("""grief fear sorrow pain shame dread worry despair""".split()),
}

DICE = ("one", "two", "three", "four", "five", "six")
TEN = tuple(str(i) for i in range(1, 11))
COIN = ("heads", "tails")
YESNO = ("yes", "no")

#: Per theme: sentence templates. ``{slot}`` takes a word; ``{slot2}`` a second, different one.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "setting": (
        "Once upon a time, a {plain} {animal} named {name} lived in a {plain} {place}.",
        "Long ago, in a {weather} {place}, there lived a {good} {animal} called {name}.",
        "In the {plain} {place} by the {place2}, {name} the {animal} woke up one {time}.",
        "There was once a {plain} {place} where {name} and a {animal} lived together.",
        "One {weather} {time}, {name} sat by the {place} and looked at the sky.",
        "Far away, past the {place}, stood a {plain} {place2} where {name} lived.",
        "Every {time}, {name} the {animal} walked around the {plain} {place}.",
        "{name} lived in a {plain} house at the edge of the {place}.",
    ),
    "friendship": (
        "{name} met a {plain} {animal} named {name2} near the {place}.",
        "{name} and {name2} ate their {food} together at the {place}.",
        "{name2} walked with {name} and carried the {object} all the way home.",
        "The {animal} and {name} sat by the {place} until the {time} came.",
        "{name} gave {name2} a {plain} {object} from the {place}.",
        "{name2} sat with {name} and talked about the {plain} {place}.",
        "Together, {name} and {name2} built a {plain} {object} for the {animal}.",
        "{name} told {name2} a story, and the {animal} listened too.",
    ),
    "conflict": (
        "{name} and {name2} argued about the {object} and stopped talking.",
        "The {animal} took the {object} from {name}, and {name} shouted at it.",
        "{name2} said something {bad}, and {name} walked away upset.",
        "{name} and the {animal} fought over the last of the {food}.",
        "{name2} broke the {object}, and {name} was very angry.",
        "A {bad} quarrel began between {name} and {name2} at the {place}.",
        "{name} blamed {name2} for the lost {object}, and they both cried.",
    ),
    "journey": (
        "{name} packed a {object} and set off toward the {place}.",
        "The road to the {place} was long, but {name} kept walking.",
        "{name} and the {animal} crossed the {plain} {place} at {time}.",
        "{name} followed an old {object} that pointed to the {place}.",
        "After many days, {name} reached the edge of the {plain} {place}.",
        "{name} climbed over the {place} with a {object} in hand.",
        "They sailed a small boat across the {place} toward the {place2}.",
    ),
    "danger": (
        "Suddenly, a {bad} {animal} jumped out of the {place} and attacked.",
        "A {bad} storm broke over the {place}, and {name} was trapped.",
        "The {plain} bridge cracked, and {name} almost fell into the {place}.",
        "{name} heard a {bad} growl in the {place} and froze in fear.",
        "A fire started in the {place}, and the smoke was {bad} and thick.",
        "The {animal} chased {name} through the {bad} {place} at night.",
        "{name} was lost in the {bad} {place}, and wolves howled nearby.",
    ),
    "loss": (
        "{name} lost the {good} {object} and could not find it anywhere.",
        "The old {animal} died, and {name} cried for a long time.",
        "{name2} moved far away, and {name} felt {bad} and alone.",
        "The flood ruined the {place}, and everything {name} loved was gone.",
        "{name} could not save the {object}, and the {sorrow} stayed for days.",
        "When the {time} came, {name} was {bad}, with only {sorrow} left.",
        "The {plain} {place} burned down, and {name} wept in {sorrow}.",
    ),
    "discovery": (
        "Under a {plain} stone, {name} found a {good} {object}.",
        "{name} opened the {object} and found a map to the {place}.",
        "In the {place}, {name} discovered a hidden {object} made of gold.",
        "{name} learned that the {animal} could talk.",
        "Behind the {place}, {name} saw a secret door covered with leaves.",
        "{name} found a box of {good} {object}s in the {place}.",
        "{name} asked if the {object} was {plain}, and the answer was {yesno}.",
        "Is the {place} far from here? {name} said {yesno}.",
    ),
    "celebration": (
        "Everyone came to the {good} wedding, and they danced and laughed with joy all night.",
        "{name} and {name2} got married, and the whole {place} celebrated with love and joy.",
        "There was a big happy party with {food}, music, and {good} songs, and everyone smiled.",
        "The village held a {good} feast, and {name} laughed with {feeling} and love.",
        "At the party, the {animal} danced happily with {name} under the {good} lights.",
        "They ate {food} and cake at the wedding party, and everyone was happy and glad.",
        "{name} threw a {good} party for {name2}, full of love, joy and laughter.",
        "The bells rang for the happy wedding, and the {place} was full of {feeling} and love.",
    ),
    "lesson": (
        "{name} learned that a {plain} {object} matters less than a {animal}.",
        "From that day on, {name} always looked after every {animal}.",
        "{name} understood that people must listen to each other.",
        "The {animal} taught {name} to be patient.",
        "{name} promised never to be {bad} again.",
        "And so {name} learned to share, even the last {object}.",
    ),
    "game": (
        "{name} rolled the dice and it landed on {dice}.",
        "{name2} rolled the dice, and it landed on {dice}.",
        "{name} said, pick a number from 1 to 10. {name2} picked {ten}.",
        "{name} tossed a coin, and it came up {coin}.",
        "The {animal} flipped a coin, and it came up {coin}.",
    ),
}

#: Slots with exactly known uniform outcomes: slot -> (outcomes, kind).
CHANCE_SLOTS: dict[str, tuple[tuple[str, ...], str]] = {
    "dice": (DICE, "d6"),
    "ten": (TEN, "number10"),
    "coin": (COIN, "coin"),
    "yesno": (YESNO, "qa"),
}

_SLOT = re.compile(r"\{(\w+?)(2?)\}")


@dataclasses.dataclass(frozen=True)
class ChanceScene:
    """A chance outcome in a story: the text before it, and its uniform outcome set."""

    kind: str
    """``d6``, ``number10``, ``coin`` or ``qa``."""
    prefix: str
    """The story text up to (not including) the outcome word."""
    outcomes: tuple[str, ...]
    """Every possible outcome word; each has probability 1/len(outcomes)."""
    outcome: str
    """The outcome this story drew."""


@dataclasses.dataclass(frozen=True)
class Story:
    text: str
    sentences: tuple[str, ...]
    themes: tuple[str, ...]
    """The theme of each sentence."""
    chance: tuple[ChanceScene, ...]


def _draw(rng: random.Random, dist: dict[str, float]) -> str:
    return rng.choices(list(dist), weights=list(dist.values()))[0]


def render(template: str, rng: random.Random, names: dict[str, str] | None = None
           ) -> tuple[str, list[tuple[str, int, str]]]:
    """Fill a template; return the sentence and (slot, char offset, word) of chance slots."""
    names = dict(names or {})
    out, pos, chances = [], 0, []
    text_len = 0
    for m in _SLOT.finditer(template):
        lit = template[pos:m.start()]
        out.append(lit)
        text_len += len(lit)
        slot, second = m.group(1), m.group(2)
        if slot in CHANCE_SLOTS:
            word = rng.choice(CHANCE_SLOTS[slot][0])
            chances.append((slot, text_len, word))
        else:
            key = slot + second
            if key not in names:
                pool = [w for w in WORDS[slot] if w not in names.values()]
                names[key] = rng.choice(pool)
            word = names[key]
        out.append(word)
        text_len += len(word)
        pos = m.end()
    out.append(template[pos:])
    return "".join(out), chances


def generate_story(rng: random.Random) -> Story:
    """One story: a theme chain from the Markov chain, one sentence per theme."""
    themes: list[str] = []
    theme = _draw(rng, START)
    while theme != END and len(themes) < MAX_THEMES:
        themes.append(theme)
        theme = _draw(rng, TRANSITIONS[theme])
    cast = {"name": rng.choice(WORDS["name"]), "animal": rng.choice(WORDS["animal"])}
    sentences, chance = [], []
    text = ""
    for th in themes:
        sentence, slots = render(rng.choice(TEMPLATES[th]), rng, cast)
        start = len(text) + (1 if text else 0)
        for slot, offset, word in slots:
            outcomes, kind = CHANCE_SLOTS[slot]
            chance.append(ChanceScene(kind=kind, prefix=(text + " " if text else "")
                                      + sentence[:offset].rstrip(" "), outcomes=outcomes,
                                      outcome=word))
        text = text + " " + sentence if text else sentence
        sentences.append(sentence)
        assert text[start:].startswith(sentence)
    return Story(text=text, sentences=tuple(sentences), themes=tuple(themes),
                 chance=tuple(chance))


def generate_stories(n: int, seed: int) -> list[Story]:
    """``n`` stories from a seeded generator (the same seed gives the same stories)."""
    rng = random.Random(seed)
    return [generate_story(rng) for _ in range(n)]


def chance_prompts(n: int, seed: int) -> list[ChanceScene]:
    """``n`` standalone chance scenes (a short opening, then the chance sentence's prefix)."""
    rng = random.Random(seed)
    out = []
    kinds = list(TEMPLATES["game"]) + [t for t in TEMPLATES["discovery"] if "{yesno}" in t]
    for _ in range(n):
        cast = {"name": rng.choice(WORDS["name"]), "animal": rng.choice(WORDS["animal"])}
        opening, _ = render(rng.choice(TEMPLATES["setting"]), rng, cast)
        sentence, slots = render(rng.choice(kinds), rng, cast)
        slot, offset, word = slots[0]
        outcomes, kind = CHANCE_SLOTS[slot]
        out.append(ChanceScene(kind=kind, prefix=opening + " " + sentence[:offset].rstrip(" "),
                               outcomes=outcomes, outcome=word))
    return out


# -- the world's own theme labeller --------------------------------------------------------


def _template_regex(template: str) -> re.Pattern[str]:
    parts, pos = [], 0
    for m in _SLOT.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        parts.append(r"[\w' ]+?")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE)


_REGEXES = [(th, _template_regex(t)) for th, ts in TEMPLATES.items() for t in ts]


def _markers() -> dict[str, set[str]]:
    words: dict[str, set[str]] = {}
    for th, ts in TEMPLATES.items():
        words[th] = {w.lower() for t in ts for w in re.findall(r"[A-Za-z]+", _SLOT.sub(" ", t))}
    common = {w for th in words for w in words[th]
              if sum(w in other for other in words.values()) > 1}
    return {th: ws - common for th, ws in words.items()}


_MARKERS = _markers()


def label_sentence(sentence: str) -> str:
    """The theme of a sentence: an exact template match, else the theme whose marker words
    it uses most, else ``"unknown"``."""
    s = sentence.strip()
    for th, rx in _REGEXES:
        if rx.match(s):
            return th
    tokens = [w.lower() for w in re.findall(r"[A-Za-z]+", s)]
    scores = {th: sum(t in ms for t in tokens) for th, ms in _MARKERS.items()}
    best = max(scores, key=lambda th: scores[th])
    return best if scores[best] > 0 else "unknown"


_SPLIT = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SPLIT.split(text.strip()) if s]


def label_text(text: str) -> list[str]:
    """Theme of every sentence of ``text``."""
    return [label_sentence(s) for s in split_sentences(text)]


def transition_matrix() -> tuple[list[str], list[list[float]]]:
    """Row-stochastic matrix over ``THEMES + (end,)``: the world's ground truth."""
    states = [*THEMES, END]
    rows = [[TRANSITIONS.get(a, {}).get(b, 0.0) for b in states] for a in states]
    rows[-1][-1] = 1.0
    return states, rows


def check_world() -> None:
    """Internal consistency: distributions sum to 1 and every slot has words."""
    for th, row in TRANSITIONS.items():
        assert abs(sum(row.values()) - 1) < 1e-9, th
        assert set(row) <= {*THEMES, END}, th
    assert abs(sum(START.values()) - 1) < 1e-9
    for ts in TEMPLATES.values():
        for t in ts:
            for m in _SLOT.finditer(t):
                assert m.group(1) in WORDS or m.group(1) in CHANCE_SLOTS, t


def vocabulary(stories: Sequence[Story]) -> set[str]:
    return {w.lower() for s in stories for w in re.findall(r"[A-Za-z]+", s.text)}
