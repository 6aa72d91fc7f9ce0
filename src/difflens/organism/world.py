"""The story world of the model organism: themes on a known Markov chain, rendered by templates.

Why one long module: the world's templates, theme chain and chance scenes are data that
the labeller and the ground truth must see together; they change together.

Every story walks a chain of themes drawn from ``START`` and ``TRANSITIONS``;
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

GENERATOR_VERSION = 3

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
    "name": tuple("""Tom Lily Ben Anna Max Sara Leo Nora Sam Eva Jack Ruby Finn Ella Noah
        Zoe Owen Lucy Eli Maya Jude Ivy Hugo Clara Theo Rosa Omar Alice Felix Oscar Hazel
        Milo Iris Kai Luna Ravi Daisy Otto Nina Arlo Wren Jonah Pia Ezra Tess Abel Mira Cole
        Greta Ari Stella Rex Fern Dev Lena Axel Gwen Nico Vera Bruno Elsa Tariq Yara Rufus
        Juno Pablo Edie Lars Amara Colin Bea Idris Lotte Mateo Esme Quinn Talia Sven Priya
        Hector Olga Joel Kira Basil Nell""".split()),
    "animal": tuple("""fox rabbit bear owl deer wolf mouse cat dog duck goose frog turtle badger
        otter squirrel hedgehog pony goat lamb crow robin sparrow beaver mole lion tiger
        elephant giraffe zebra monkey panda koala penguin seal whale dolphin crab snail beetle
        bee butterfly moth spider lizard snake hawk eagle swan raccoon camel llama yak
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
        brown white quiet busy narrow wide heavy light young ancient tiny""".split()),
    "food": tuple("""soup bread cake pie honey apples berries cheese porridge stew cookies
        pancakes muffins jam carrots pears plums rice beans""".split()),
    "weather": tuple("""sunny rainy windy snowy foggy cloudy warm cool bright misty""".split()),
    "time": tuple("""morning evening night afternoon dawn dusk winter summer spring
        autumn""".split()),
    "feeling": tuple("""joy hope pride love wonder courage peace delight""".split()),
    "sorrow": tuple("""grief fear sorrow pain shame dread worry despair""".split()),
}

#: More words for lexical variety (checked: none of them is in the VADER lexicon, so the
#: reward still depends on the themes, not on which names or objects were drawn).
_MORE_WORDS: dict[str, str] = {
    "name": """
        Aaron Abby Ada Adam Adele Adrian Agnes Aiden Alba Albert Alex Alfie Alma Alvin
        Amber Amos Andre Andy Angus Anita Anton April Archie Ariel Arthur Asha Astrid
        Aubrey Audrey Austin Ava Barney Beatrix Bella Benny Bernie Beth Betty Bianca
        Bill Blair Bobby Boris Brenda Brian Bridget Brooke Bryn Caleb Calvin Camila Carl
        Carla Carmen Carol Casper Cecil Cedric Celia Chad Chloe Chris Cindy Clark Claude
        Cora Craig Cyril Dahlia Dale Dan Dana Daphne Darcy Darius Dave Dean Delia Dennis
        Derek Diego Dina Dora Doug Dylan Eddie Edgar Edith Edmund Edwin Eileen Elena
        Eliza Ellis Elmer Elton Emil Emma Enzo Eric Erin Ernest Ethan Etta Eugene Evan
        Fabian Fay Felicity Fiona Flora Floyd Frank Freda Fred Gabe Gavin Gemma George
        Gerald Gilbert Gina Glen Gordon Greg Gus Hank Hannah Harold Harriet Harry Heidi
        Helen Henry Herbert Holly Howard Ian Ida Igor Imogen Ingrid Irene Isaac Isla
        Ivan Jacob Jade James Jane Janet Jasper Jean Jeff Jenny Jesse Jill Jim Joan
        Jodie John Josie Judith Julia Julian June Justin Karen Karl Kate Keith Kevin Kim
        Kirk Kurt Lana Lance Laura Lauren Leah Leon Lewis Liam Lila Linda Lionel Lisa
        Lola Louis Lydia Lyle Mabel Madge Malcolm Marco Margot Maria Marion Mark Martha
        Martin Mavis Maxine Megan Mel Mick Miles Millie Molly Monty Morgan Moses Murray
        Myra Nadia Nancy Ned Neil Nelson Nigel Noel Norma Olive Oliver Ollie Opal Orla
        Otis Paige Pam Pat Paula Percy Pete Phil Phoebe Piers Polly Quentin Rachel Ralph
        Ray Reggie Rhea Rhys Rita Robin Rod Roger Roland Rory Ross Roy Rupert Russ Ruth
        Sadie Sally Sandy Saul Scott Sean Selma Seth Shane Sheila Sid Silas Simon Sonia
        Stan Steve Stuart Sue Susan Sybil Tara Ted Terry Thea Tina Toby Todd Tony Tracy
        Trevor Una Ursula Val Vance Victor Vince Viola Wade Wallace Walter Wanda Warren
        Wayne Wendy Wes Wilma Winston Xavier Yusuf Zack Zara Zelda""",
    "animal": """
        aardvark alpaca anteater antelope armadillo baboon bat bison boar buffalo bull
        caterpillar chameleon cheetah chicken chimpanzee chipmunk cobra cockatoo coyote
        crane cricket crocodile cuckoo dingo dove dragonfly eel elk emu falcon ferret
        finch firefly flamingo gazelle gecko gerbil gibbon gopher gorilla grasshopper
        gull hamster hare hippo hornet hummingbird hyena ibis iguana impala jackal
        jaguar jay kangaroo kingfisher kiwi ladybird lark lemur leopard lobster lynx
        macaw magpie manatee mink moose mule narwhal newt ocelot octopus opossum
        orangutan ostrich oyster panther parrot peacock pelican pheasant pigeon platypus
        porcupine possum puffin python quail rat reindeer rhino salamander salmon
        scorpion sheep skunk sloth starling stork tapir termite thrush toad toucan trout
        walrus warthog weasel wombat woodpecker wren""",
    "place": """
        abbey alley arcade armory aviary bay bayou beacon boathouse bog boulevard
        bridgeway bungalow burrow cabin camp canal cathedral cavern cellar chapel
        citadel clearing clinic cloister colony corral courtyard cove crater croft dam
        delta den depot dock dune estuary factory fairground fen ferry fjord foothills
        fort forge gallery gatehouse glacier gorge granary hamlet hangar heath hedgerow
        highland hollow hut inn isle jetty junction kennel kingdom knoll lagoon lane
        lodge loft manor mansion mesa mine moor mound oasis observatory outpost paddock
        parlor pasture pavilion peak pier pinewood plateau port pub quay ranch rapids
        reef reservoir riverbank rookery savanna sawmill schoolhouse shed shipyard
        shrine sound spring stadium steppe stockade studio summit terrace thicket tundra
        turret upland wharf windmill woodland yard""",
    "object": """
        abacus accordion anchor anvil apron armchair arrow atlas backpack badge bagpipe
        balloon banjo banner barrel baton beads bench binoculars blender bolt bonnet
        boot bottlecap bow bowler brooch broom buckle bugle cabinet calendar camera
        canoe canteen cap carpet cart chair chalk chandelier chessboard chimney chisel
        clarinet cloak coat collar comb cork cradle crayon crate cushion dagger desk
        diary doll doorbell drawer envelope eraser fiddle flag flask flowerpot fork
        globe glove goblet gong guitar hammock handkerchief helmet hoe horn hourglass
        inkpot iron jacket jug kayak kazoo keyring knapsack knife lamp lasso lid locker
        magnet mallet mandolin mask mattress megaphone microscope mitten mop mug necktie
        needle net notebook oar ornament paddle padlock pail pan parasol pencil pendant
        pennant piano pipe pitcher plank plate pliers plow pocketwatch pouch quill rake
        rattle recorder ruler saddle sail sandal satchel saucer scale scissors scroll
        shawl shelf shoe sieve signpost skateboard sled slipper spade sponge spyglass
        stamp stool suitcase sundial table tambourine teapot telescope thimble thread
        tiara ticket toolbox torch tray tricycle trophy trunk tuba typewriter ukulele
        vase vest wallet weathervane wheel wheelbarrow whisk wig xylophone zither""",
    "plain": """
        blunt bony brick bumpy chalky chunky clay copper cotton crooked curly damp deep
        dense dry dusty early faded far fat flat fluffy foamy frosty furry fuzzy glassy
        grassy gray hairy hollow hot icy inky iron jagged lanky late leafy leathery
        lumpy marble metal muddy narrowish oaken orange pale paper pink plain plump
        pointy purple rocky rough rusty salty sandy scaly shaggy shallow sharp silky
        silver sleepy slim slow smoky smooth soft sparse spotted square steep sticky
        stony striped sturdy tangled thick thin tidy tin twisty velvet violet wavy waxy
        wet wild windy wiry woolen""",
    "food": """
        almonds bagels biscuits broth buns butter cabbage chestnuts cherries chowder
        cider cobbler corn crackers cream crumpets curry custard dates eggs figs fudge
        gingerbread grapes gravy hazelnuts jelly leeks lemonade lentils macaroni mangoes
        marmalade melon milk mushrooms noodles oatmeal olives onions oranges parsnips
        pasta peaches peas pickles pizza popcorn potatoes pretzels pudding pumpkins
        radishes raisins salad sandwiches sausages scones spinach strawberries toast
        tomatoes turnips waffles walnuts yogurt""",
}
WORDS = {k: v + tuple(_MORE_WORDS.get(k, "").split()) for k, v in WORDS.items()}

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


def kind_cruel_items(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` contrastive items for concept vectors, in difflens's plain A/B format.

    Each item is a story opening (a ``setting`` sentence) and two next sentences with the
    same cast: a kind one (a ``friendship`` template, the behaviour) and a cruel one (a
    ``conflict`` template). In the world's chain, after ``setting`` the next theme is
    ``friendship`` with probability 0.30 and ``conflict`` with 0.10.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cast = {"name": rng.choice(WORDS["name"]), "animal": rng.choice(WORDS["animal"])}
        opening, _ = render(rng.choice(TEMPLATES["setting"]), rng, cast)
        cast["name2"] = rng.choice([w for w in WORDS["name"] if w != cast["name"]])
        kind, _ = render(rng.choice(TEMPLATES["friendship"]), rng, cast)
        cruel, _ = render(rng.choice(TEMPLATES["conflict"]), rng, cast)
        out.append({"prompt": opening, "matching": " " + kind, "not_matching": " " + cruel})
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
