"""The lineage demo's wall time on a fresh machine: ``difflens demo`` on the shipped
organism (loaded, not built), and, with ``--pair``, its baseline ``difflens compare`` of the
pair base -> rl on the same inputs and options (what a third and fourth model cost).
``--cold`` first builds the default recipe (seed 0) into an empty cache and runs the demo on
that build.

``DIFFLENS_CACHE`` is set to a temporary folder, so nothing cached by an earlier run is
reused (the shipped organism is read from the installed package, as on a fresh machine).
Each section's seconds come from the run's own ``seconds`` summary. The budget of the issue
is 180 s for the demo on 2 CPU cores.

Last line: ``demo_s=<a> [pair_s=<b>] [cold_s=<c> build_s=<d>] models=<lineage length>
<section>_s=...``.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", action="store_true", help="also time the pair base -> rl")
    ap.add_argument("--cold", action="store_true", help="also build the organism and time "
                    "the demo on that build")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    os.environ["DIFFLENS_CACHE"] = str(tmp / "cache")
    from difflens.models import ModelSet, load_model
    from difflens.organism.build import LINEAGE, shipped_organism
    from difflens.organism.config import OrganismConfig
    from difflens.pipelines.compare import run_compare
    from difflens.pipelines.compare_inputs import organism_inputs
    from difflens.pipelines.demo import demo_config, run_demo

    keys: dict[str, float] = {}
    t0 = time.perf_counter()
    summary = run_demo(tmp / "demo")
    keys["demo_s"] = time.perf_counter() - t0
    print(f"demo on the shipped organism: {keys['demo_s']:.1f} s", flush=True)
    if args.pair:
        org = shipped_organism()
        pair = ModelSet({n: load_model(org.model_path(n), device="cpu")
                         for n in (LINEAGE[0], LINEAGE[-1])})
        t0 = time.perf_counter()
        run_compare(pair, tmp / "pair", organism_inputs(tmp / "pair", org.config.seed),
                    config=demo_config(org.config.seed))
        keys["pair_s"] = time.perf_counter() - t0
        print(f"the pair base -> {LINEAGE[-1]} on the same inputs: {keys['pair_s']:.1f} s")
    if args.cold:
        t0 = time.perf_counter()
        cold = run_demo(tmp / "cold", config=OrganismConfig(seed=0))
        keys["cold_s"] = time.perf_counter() - t0
        keys["build_s"] = sum(cold["organism_build"]["times_s"].values())
        print(f"cold: {keys['cold_s']:.0f} s (organism build {keys['build_s']:.0f} s)")
    print(f"outputs under {tmp}")
    print(" ".join(f"{k}={v:.1f}" for k, v in keys.items()) + f" models={len(LINEAGE)} "
          + " ".join(f"{k}={v:.1f}" for k, v in summary["seconds"].items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
