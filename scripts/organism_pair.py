"""The instrument pages' run: every instrument at its full settings on the shipped organism's
base and one tuned model, with the story world's inputs (whose ground truth is known).

    python scripts/organism_pair.py OUT [--tuned rl]

It is ``run_compare`` on the pair ``base``/``tuned`` with each section's full config (not
compare's ``quick()`` presets) and the world's inputs at the sizes the pages report; the
page is ``OUT/index.html``. Store it with ``render_results.py --store organism-pair OUT``.
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from difflens.models import ModelSet, load_model
from difflens.organism.build import shipped_organism
from difflens.pipelines.collapse import CollapseConfig
from difflens.pipelines.compare import CompareConfig, run_compare, write_compare_index
from difflens.pipelines.compare_inputs import organism_inputs
from difflens.pipelines.concepts import ConceptsConfig
from difflens.pipelines.control import ControlConfig
from difflens.pipelines.theme_config import ThemesConfig
from difflens.pipelines.trajectories import TrajectoriesConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tuned", default="rl", help="the organism's tuned model")
    args = parser.parse_args()
    t0 = time.perf_counter()
    org = shipped_organism()
    models = ModelSet({"base": load_model(org.model_path("base"), device="cpu"),
                       "tuned": load_model(org.model_path(args.tuned), device="cpu")})
    inputs = organism_inputs(args.out, 0, n_texts=200, n_concept_items=400,
                             n_trajectory_prompts=40, n_collapse_prompts=24,
                             n_control_prompts=32, n_theme_prompts=300)
    config = CompareConfig(
        seed=0,
        collapse=dataclasses.replace(CollapseConfig(), seed=0),
        concepts=dataclasses.replace(ConceptsConfig(), position="last", test_fraction=0.3),
        trajectories=TrajectoriesConfig(),
        control=ControlConfig(),
        themes=dataclasses.replace(ThemesConfig(), k_samples=16, k_min=6, k_max=14))
    run = run_compare(models, args.out, inputs, config=config, progress=True)
    write_compare_index(args.out, run, f"The organism's base and {args.tuned}, every "
                        "instrument at its full settings")
    print(f"wall_s={time.perf_counter() - t0:.1f} organism={org.organism_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
