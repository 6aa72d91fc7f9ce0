"""The lineage demo's wall time: cold (organism build + demo) and cached, against its
baseline, ``difflens compare`` of the pair base -> rl on the same inputs and options.

The organism is built into a fresh cache folder (``DIFFLENS_CACHE`` set to a temporary
folder), so the first run is cold; the demo then runs again on the cached build, and the
pair's compare runs last. Each section's seconds come from the runs' own ``seconds``
summaries. The budgets of the issue are cold <= 600 s and cached <= 180 s on 2 CPU cores.
Last line: ``cold_s=<a> build_s=<b> cached_s=<c> pair_s=<d> models=3 pair_models=2
<section>_s=<cached seconds> ...``.
"""

import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    os.environ["DIFFLENS_CACHE"] = str(tmp / "cache")
    from difflens.models import ModelSet, load_model
    from difflens.organism.build import LINEAGE, find_organism
    from difflens.pipelines.compare import run_compare
    from difflens.pipelines.compare_inputs import organism_inputs
    from difflens.pipelines.demo import demo_config, run_demo

    t0 = time.perf_counter()
    run_demo(tmp / "cold")
    cold = time.perf_counter() - t0
    org = find_organism()
    assert org is not None
    build = sum(org.build_info["times_s"].values())
    t0 = time.perf_counter()
    summary = run_demo(tmp / "cached")
    cached = time.perf_counter() - t0
    pair = ModelSet({n: load_model(org.model_path(n), device="cpu")
                     for n in (LINEAGE[0], LINEAGE[-1])})
    t0 = time.perf_counter()
    run_compare(pair, tmp / "pair", organism_inputs(tmp / "pair", org.config.seed),
                config=demo_config(org.config.seed))
    pair_s = time.perf_counter() - t0
    sections = summary["seconds"]
    print(f"outputs under {tmp} (cold, cached, pair)")
    print(f"cold: {cold:.0f} s (organism build {build:.0f} s); cached: {cached:.0f} s; "
          f"the pair base -> {LINEAGE[-1]} on the same inputs: {pair_s:.0f} s")
    print(f"cold_s={cold:.1f} build_s={build:.1f} cached_s={cached:.1f} pair_s={pair_s:.1f} "
          f"models={len(LINEAGE)} pair_models=2 "
          + " ".join(f"{k}={v:.1f}" for k, v in sections.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
