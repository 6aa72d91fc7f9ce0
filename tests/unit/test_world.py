"""The organism's story world: seeded, consistent, and labelled by its own labeller."""

import collections

import numpy as np

from difflens.organism import world as W


def test_seeded_and_consistent():
    W.check_world()
    a, b = W.generate_stories(50, 3), W.generate_stories(50, 3)
    assert a == b and a != W.generate_stories(50, 4)
    for s in a:
        assert len(s.sentences) == len(s.themes) <= W.MAX_THEMES
        assert s.text == " ".join(s.sentences)
        assert s.themes[0] in W.START


def test_theme_chain_follows_the_matrix():
    stories = W.generate_stories(4000, 0)
    counts = collections.Counter(a for s in stories for a in s.themes[:1])
    first = {k: v / len(stories) for k, v in counts.items()}
    for theme, p in W.START.items():
        assert abs(first.get(theme, 0) - p) < 0.03
    trans = collections.Counter((x, y) for s in stories
                                for x, y in zip(s.themes, s.themes[1:], strict=False))
    out_of_setting = sum(v for (x, _), v in trans.items() if x == "setting")
    for nxt, p in W.TRANSITIONS["setting"].items():
        if nxt != W.END:
            assert abs(trans[("setting", nxt)] / out_of_setting - p) < 0.05
    states, matrix = W.transition_matrix()
    assert np.allclose(np.sum(matrix, axis=1), 1.0) and states[-1] == W.END


def test_labeller_recovers_ground_truth():
    stories = W.generate_stories(500, 1)
    pairs = [(sen, th) for s in stories for sen, th in zip(s.sentences, s.themes, strict=True)]
    acc = np.mean([W.label_sentence(sen) == th for sen, th in pairs])
    assert acc > 0.99
    assert W.label_text("They ate cake at the wedding party, and everyone danced.")[0] == \
        "celebration"
    assert W.label_sentence("xyzzy plugh") == "unknown"


def test_chance_scenes_are_uniform_and_prefixes_match():
    stories = W.generate_stories(3000, 2)
    scenes = [c for s in stories for c in s.chance]
    assert scenes
    for s in stories:
        for c in s.chance:
            assert s.text.startswith(c.prefix + " " + c.outcome)
    d6 = collections.Counter(c.outcome for c in scenes if c.kind == "d6")
    freq = np.array([d6[o] for o in W.DICE]) / sum(d6.values())
    assert np.abs(freq - 1 / 6).max() < 0.05
    probes = W.chance_prompts(40, 0)
    assert {p.kind for p in probes} == {"d6", "number10", "coin", "qa"}
    assert all(p.outcome in p.outcomes and not p.prefix.endswith(" ") for p in probes)
