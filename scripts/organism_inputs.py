"""Write the organism inputs that the stored issue-19 runs in docs/results read.

    python scripts/organism_inputs.py DIR

writes ``DIR/openings.txt`` (the first sentences of 30 world stories, seed 11) and three
contrastive A/B files built from the world's own sentence templates, 300 items each with
seed 7: ``kind.jsonl`` (friendship vs conflict), ``joyful.jsonl`` (celebration vs loss) and
``curious.jsonl`` (discovery vs danger). Each item is an opening with two continuations that
differ only in the theme of their sentence.
"""

import argparse
import json
import random
from pathlib import Path

from difflens._io import write_bytes_atomic
from difflens.organism import world as W

BEHAVIOURS = (("kind", "friendship", "conflict"), ("joyful", "celebration", "loss"),
              ("curious", "discovery", "danger"))


def theme_items(good: str, bad: str, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` A/B items: an opening, then a ``good``-theme sentence against a ``bad`` one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cast = {"name": rng.choice(W.WORDS["name"]), "animal": rng.choice(W.WORDS["animal"])}
        opening, _ = W.render(rng.choice(W.TEMPLATES["setting"]), rng, cast)
        cast["name2"] = rng.choice([w for w in W.WORDS["name"] if w != cast["name"]])
        a, _ = W.render(rng.choice(W.TEMPLATES[good]), rng, dict(cast))
        b, _ = W.render(rng.choice(W.TEMPLATES[bad]), rng, dict(cast))
        out.append({"prompt": opening, "matching": " " + a, "not_matching": " " + b})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    stories = W.generate_stories(30, seed=11)
    write_bytes_atomic(out / "openings.txt",
                       "".join(st.sentences[0] + "\n" for st in stories).encode())
    for name, good, bad in BEHAVIOURS:
        write_bytes_atomic(out / f"{name}.jsonl", "".join(
            json.dumps(i) + "\n" for i in theme_items(good, bad, 300, seed=7)).encode())
    print(f"wrote {out}/openings.txt and {', '.join(b[0] + '.jsonl' for b in BEHAVIOURS)}")


if __name__ == "__main__":
    main()
