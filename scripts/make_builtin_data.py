"""Write difflens's built-in inputs of ``difflens compare`` (src/difflens/data/builtin_*.jsonl).

Every text here was written for difflens and ships under the package's license: generic
prompts, kind-vs-unkind A/B items (the concept) and labelled kind/unkind sentences (the
control probe). The items are the cross product of the lists below, so the files are
reproducible: ``python scripts/make_builtin_data.py`` rewrites them identically.
"""

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "difflens" / "data"

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The best way to learn a new language is",
    "Tell me a story about a dragon who",
    "Here is my advice for someone starting their first job:",
    "The old lighthouse keeper looked out at the storm and",
    "My favourite memory from childhood is",
    "Write a short poem about the moon.",
    "The scientist opened the box and found",
    "What should I cook for dinner tonight?",
    "The train stopped in the middle of nowhere, and",
    "Explain why the sky is blue.",
    "A letter to my future self:",
    "The robot woke up for the first time and",
    "Describe a perfect Sunday morning.",
    "The detective looked at the muddy footprints and said",
    "How do I stay motivated when learning something hard?",
    "In the year 2150, cities will",
    "The little fox was lost in the forest until",
    "Give me three ideas for a birthday present.",
    "She had never seen the ocean before, so",
    "What is the meaning of friendship?",
    "The last page of the diary said",
    "A recipe for happiness:",
    "The team had lost every game that season, but",
    "Why do people enjoy music?",
    "The door at the end of the hallway was locked, and",
    "Write a review of an imaginary restaurant.",
    "My grandmother always told me that",
    "The spaceship's engines failed, and the crew",
    "What would happen if everyone could read minds?",
    "It was the first day of school, and the new teacher",
    "The painter stared at the empty canvas and",
    "How should I apologise to a friend I hurt?",
    "The wind carried a strange sound across the hills:",
    "List the pros and cons of living in a big city.",
    "The king announced to the crowd that",
    "A conversation between a cat and a dog:",
    "When the power went out, the whole street",
    "What is the most important thing in life?",
    "The message in the bottle read:",
]

SITUATIONS = [
    "My friend forgot my birthday.",
    "A stranger asked me for directions.",
    "My little brother broke my favourite mug.",
    "A new colleague asked for help with a task.",
    "My neighbour's dog dug up my garden.",
    "A child dropped her ice cream next to me.",
    "My partner came home late without calling.",
    "A student gave a wrong answer in class.",
    "The waiter brought me the wrong order.",
    "My friend told me she failed her exam.",
    "Someone bumped into me on the bus.",
    "My sister asked to borrow my car.",
    "A teammate missed the winning shot.",
    "An old man was slow at the checkout.",
    "My roommate ate my leftovers.",
    "A shy classmate asked to sit with me.",
    "My friend showed me a drawing he made.",
    "The delivery arrived two days late.",
    "A tourist could not find the museum.",
    "My cousin spilled juice on the carpet.",
    "A coworker took credit for my idea.",
    "My son came home with a bad grade.",
    "A stranger's child was crying loudly.",
    "My friend cancelled our plans again.",
    "A beginner asked a basic question online.",
]

REPLIES = [  # (kind, unkind): the same speaker, the opposite attitude
    ("I said, \"Don't worry, it happens to everyone.\"",
     "I said, \"You are useless, as always.\""),
    ("I smiled and offered to help.", "I rolled my eyes and walked away."),
    ("I told them gently that it was okay.", "I shouted at them in front of everyone."),
    ("I said, \"Thank you for telling me.\"", "I said, \"Nobody cares about your problems.\""),
    ("I gave them a hug and listened.", "I laughed at them and made it worse."),
    ("I thanked them and stayed patient.", "I insulted them and stormed off."),
]

KIND_SENTENCES = [
    "{s} thanked everyone for their help.",
    "{s} shared lunch with a hungry classmate.",
    "{s} comforted a friend who was crying.",
    "{s} helped an old woman carry her bags.",
    "{s} said something kind to a stranger.",
    "{s} forgave the mistake with a smile.",
    "{s} listened patiently to the whole story.",
    "{s} welcomed the new neighbours warmly.",
    "{s} praised the team for their hard work.",
    "{s} offered to share the umbrella.",
]
UNKIND_SENTENCES = [
    "{s} mocked everyone who tried to help.",
    "{s} stole lunch from a hungry classmate.",
    "{s} laughed at a friend who was crying.",
    "{s} pushed an old woman out of the way.",
    "{s} shouted an insult at a stranger.",
    "{s} humiliated them for the mistake.",
    "{s} interrupted and sneered at the story.",
    "{s} threatened the new neighbours.",
    "{s} blamed the team and called them stupid.",
    "{s} kicked the dog and slammed the door.",
]
SUBJECTS = ["Anna", "The teacher", "My uncle", "The boy", "Our manager", "The nurse",
            "A stranger", "The captain", "Her brother", "The old farmer", "The girl",
            "The new student"]


def main() -> None:
    prompts = [{"prompt": p} for p in PROMPTS]
    items = [{"prompt": sit, "matching": " " + kind, "not_matching": " " + unkind}
             for sit in SITUATIONS for kind, unkind in REPLIES]
    labelled = [{"text": t.format(s=s), "label": label, "group": g}
                for g, s in enumerate(SUBJECTS)
                for label, sentences in ((0, KIND_SENTENCES), (1, UNKIND_SENTENCES))
                for t in sentences]
    for name, rows in (("builtin_prompts", prompts), ("builtin_kind_vs_unkind", items),
                       ("builtin_control_labelled", labelled)):
        (DATA / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
