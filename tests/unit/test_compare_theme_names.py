"""``difflens compare`` shows a theme by its name: a planted lineage whose last stage moves
the samples into one word group, and every place of compare (the attribution table and
``metric_labels``, the page's tables, takeaways, headline and stage figure) names each theme
by the words the themes section found for it; ``themes_moved`` lists the moved themes."""

import html
import json
import re

import numpy as np
import pandas as pd
import torch

from difflens.models import ModelSet
from difflens.models.tiny import bigram_model
from difflens.pipelines.compare import run_compare, theme_label, write_compare_index
from difflens.pipelines.compare_config import CompareConfig, CompareInputs
from difflens.pipelines.theme_config import ThemesConfig

GROUPS = {"harbor": ["harbor", "boat", "shore", "sail"],
          "forest": ["forest", "tree", "leaf", "moss"],
          "bakery": ["bread", "cake", "oven", "flour"]}
WORDS = [w for group in GROUPS.values() for w in group]


def _table(pull: str | None) -> torch.Tensor:
    """Bigram logits: after a word the next stays in its group (p = 0.97); with ``pull``,
    every word leads into that group instead (p = 0.99)."""
    v = 4 + len(WORDS)
    table = torch.full((v, v), -30.0)
    for name, group in GROUPS.items():
        for w in group:
            row = 4 + WORDS.index(w)
            for other, words in GROUPS.items():
                target = pull or name
                p = (0.97 if other == name else 0.015) if pull is None else (
                    0.99 if other == target else 0.005)
                for o in words:
                    table[row, 4 + WORDS.index(o)] = float(np.log(p / len(words)))
    table[2] = table[4]  # after <bos>: as after the first word
    return table


def _lineage() -> ModelSet:
    """base -> m1 -> m2: m1 copies the base exactly; m2 pulls every sample into the harbor
    words (the planted move: the harbor theme's share rises, the others' fall)."""
    return ModelSet({"base": bigram_model(WORDS, _table(None), name="bigram-base"),
                     "m1": bigram_model(WORDS, _table(None), name="bigram-m1"),
                     "m2": bigram_model(WORDS, _table("harbor"), name="bigram-m2")})


def _encoder(texts):
    """A segment's share of words from each group: the planted theme."""
    rng = np.random.default_rng(0)
    out = []
    for t in texts:
        counts = np.array([sum(w in g for w in t.split()) for g in GROUPS.values()], float)
        out.append(counts / max(np.linalg.norm(counts), 1e-9) + 0.01 * rng.normal(size=3))
    out = np.asarray(out, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _visible(page: str) -> str:
    """The page's text as a reader sees it: no scripts (the charts' data), no tags (nor
    their hover titles)."""
    page = re.sub(r"<script.*?</script>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]*>", " ", page))


def test_compare_names_each_theme_and_lists_the_themes_that_moved(tmp_path):
    rng = np.random.default_rng(0)
    prompts = tuple(" ".join(rng.choice(WORDS, size=3)) for _ in range(24))
    themes = ThemesConfig(steps=("sample", "fit"), k_samples=4, max_new_tokens=12,
                          segment="tokens", window=4, encoder=_encoder, k_min=3, k_max=3)
    inputs = CompareInputs(texts=(), prompts=(), trajectory_prompts=(), concept_items="",
                           control_examples=(), control_prompts=(), theme_prompts=prompts)
    out = tmp_path / "out"
    run = run_compare(_lineage(), out, inputs,
                      config=CompareConfig(sections=("themes",), themes=themes))
    stored = json.loads((out / "summary.json").read_text())
    found = {t["theme"]: t for t in stored["themes"]["themes"]}
    assert len(found) == 3  # k is the planted groups' number; each theme is one group
    groups = {t: next(g for g, ws in GROUPS.items() if set(th["keywords"][:3]) <= set(ws))
              for t, th in found.items()}
    assert sorted(groups.values()) == sorted(GROUPS)
    harbor = next(t for t, g in groups.items() if g == "harbor")

    # the table: a label per theme share, naming the theme by the themes section's words
    table = pd.read_parquet(out / "data" / "attribution.parquet")
    assert list(table.columns[:3]) == ["section", "metric", "label"]
    assert set(table.metric) == {f"theme_share_{t}" for t in found}
    for r in table.to_dict("records"):
        t = int(r["metric"].removeprefix("theme_share_"))
        assert r["label"].startswith(f"theme {t} (")
        assert all(w in r["label"] for w in found[t]["name"].split()), (r["label"], found[t])
        assert r["label"] == theme_label(t, found[t]["name"], found[t]["keywords"])
    # the summary keeps its keys, and names them in metric_labels
    labels = stored["metric_labels"]
    assert set(stored["attribution"]) == set(labels) == set(table.metric)
    assert labels == dict(zip(table.metric, table.label, strict=False))
    assert run.summary["metric_labels"] == labels
    # the planted move: the last stage moved the harbor theme, the copy did not
    att = stored["attribution"][f"theme_share_{harbor}"]
    assert att["m2"]["ci_low"] > 0.3
    assert att["m1"]["ci_low"] <= 0 <= att["m1"]["ci_high"]

    # the page: the label in the table, takeaways, headline and stage figure; no bare key
    write_compare_index(out, run, "themes by name")
    page = (out / "index.html").read_text()
    text = _visible(page)
    assert not re.search(r"theme_share_\d", text), re.findall(r".{60}theme_share_\d.{20}", text)
    section = next(s for s in run.sections if s.heading == "Themes")
    assert labels[f"theme_share_{harbor}"] in text
    assert section.takeaways and all(line.startswith("theme ") for line in section.takeaways)
    assert f"{labels[f'theme_share_{harbor}']}: the m1 → m2 stage moved it most" in "\n".join(
        section.takeaways)
    stages = next(f for f in section.figures if f.name == "stages_themes")
    titles = [a.text for a in stages.plotly().layout.annotations]
    assert sorted(titles) == sorted(lab[:1].upper() + lab[1:] for lab in labels.values())
    assert "theme_share_" not in stages.caption

    # themes_moved: by name, ordered by |change|, the planted theme first
    moved = stored["themes_moved"]
    assert [m["theme"] for m in moved] and len(moved) == len(found)
    sizes = [abs(m["change"]["value"]) for m in moved]
    assert sizes == sorted(sizes, reverse=True)
    top = moved[0]
    assert top["theme"] == harbor and top["name"] == found[harbor]["name"]
    assert top["label"] == labels[top["metric"]] and (top["from"], top["to"]) == ("base", "m2")
    assert top["change"]["ci_low"] > 0 and top["change"]["resampled"] == "prompts"
    assert top["levels"]["m2"] - top["levels"]["base"] == top["change"]["value"]
    total = att["m1"]["value"] + att["m2"]["value"]
    assert abs(top["change"]["value"] - total) < 1e-12
