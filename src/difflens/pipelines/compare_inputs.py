"""What ``difflens compare`` runs on: the inputs that ship with difflens (for a user's own
models) and the organism world's (for the demo's lineage).

The built-in files (``difflens/data/builtin_*.jsonl``) were written for difflens and ship
under its license (``scripts/make_builtin_data.py`` writes them): 40 generic prompts, 150
kind-vs-unkind A/B items (25 situations x 6 replies) and 240 kind/unkind sentences for the
control probe (12 subjects x 10 each, grouped by subject so a split never shares one).
"""

import json
from importlib import resources
from pathlib import Path

from difflens._io import write_bytes_atomic
from difflens.inputs.labelled import read_labelled
from difflens.inputs.prompts import read_prompts
from difflens.pipelines.compare_config import CompareInputs


def _data(name: str) -> Path:
    return Path(str(resources.files("difflens") / "data" / name))


def builtin_inputs() -> CompareInputs:
    """The inputs that ship with difflens: every section runs on any causal LM with them."""
    prompts = tuple(read_prompts(_data("builtin_prompts.jsonl"), field="prompt"))
    examples = tuple(read_labelled(_data("builtin_control_labelled.jsonl")))
    return CompareInputs(
        texts=prompts, prompts=prompts, trajectory_prompts=prompts[:24],
        concept_items=str(_data("builtin_kind_vs_unkind.jsonl")),
        control_examples=examples, control_prompts=prompts[:16], theme_prompts=prompts,
        control_source="240 built-in kind/unkind sentences (bad = unkind)",
        names={"texts": "the 40 built-in prompts",
               "concepts": "150 built-in kind-vs-unkind A/B items"})


def organism_inputs(out: Path, seed: int, *, n_texts: int = 120, n_concept_items: int = 300,
                    n_trajectory_prompts: int = 24, n_collapse_prompts: int = 16,
                    n_control_prompts: int = 12, n_theme_prompts: int = 160,
                    heldout: Path | None = None) -> CompareInputs:
    """The story world's inputs, whose ground truth is known: held-out stories to score,
    the world's own chance scenes as probes (true distribution uniform), kind-vs-cruel
    items, danger/loss sentences for the control probe, and theme prompts with their true
    chains. Files the sections read are written under ``out/inputs``."""
    from difflens.organism import world as W
    from difflens.organism.truth import (
        organism_labelled,
        organism_measure,
        organism_openings,
        organism_theme_prompts,
    )

    folder = out / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    probe_file = folder / "world_chance_probes.jsonl"
    scenes = W.chance_prompts(40, seed=seed + 17)
    write_bytes_atomic(probe_file, "".join(json.dumps(
        {"probe": sc.kind, "phrasing": f"scene{i}", "prompt": sc.prefix,
         "answers": list(sc.outcomes)}) + "\n" for i, sc in enumerate(scenes)).encode())
    concept_file = folder / "kind_vs_cruel.jsonl"
    write_bytes_atomic(concept_file, "".join(
        json.dumps(i) + "\n" for i in W.kind_cruel_items(n_concept_items, seed=seed + 7))
        .encode())
    if heldout is not None:
        texts = [json.loads(line)["text"] for line in heldout.read_text().splitlines()]
    else:
        texts = [st.text for st in W.generate_stories(n_texts, seed=seed + 1_000_003)]
    stories = W.generate_stories(n_collapse_prompts + 200, seed=seed + 13)
    openings = tuple(st.sentences[0] for st in stories[:n_collapse_prompts])
    reference = tuple(" ".join(st.sentences[1:4]) for st in stories[n_collapse_prompts:]
                      if len(st.sentences) > 1)
    trajectory = tuple(st.sentences[0] for st in W.generate_stories(n_trajectory_prompts,
                                                                    seed=seed + 11))
    theme_prompts, truth = organism_theme_prompts(n_theme_prompts, seed=seed + 555)
    return CompareInputs(
        texts=tuple(texts[:n_texts]), prompts=openings, trajectory_prompts=trajectory,
        concept_items=str(concept_file),
        control_examples=tuple(organism_labelled(300, seed=seed + 101)),
        control_prompts=tuple(organism_openings(n_control_prompts, seed=seed + 99)),
        theme_prompts=tuple(theme_prompts), probes=str(probe_file), reference=reference,
        reference_name="held-out world stories (sentences 2-4)", tree_prompt=openings[0],
        theme_truth=truth, control_measure=organism_measure(),
        control_measure_name="world theme labeller",
        control_source=("300 world stories, every sentence labelled by its true theme; bad = "
                        "danger, loss"),
        names={"texts": "held-out world stories",
               "concepts": f"{n_concept_items} kind-vs-cruel world items"})
