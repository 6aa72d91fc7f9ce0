"""Building the model organism: a tiny base LM and its tuned lineage, on CPU, in minutes.

The recipe, one reproducible build keyed by one config (``config``);
its steps live beside this module (``training``, ``measure``), and this one runs them in order and
keeps the cache:

1. Generate the story world's corpus (seeded) and train a byte-level BPE tokenizer on it.
2. Train a ~1M-parameter Llama from scratch on it (next-token loss, AdamW, cosine LR).
3. Tune a copy with reinforcement learning: the reward is the VADER compound sentiment of
   its completion of a story opening, minus ``kl_coef`` times the sampled KL to the base.
   The trainer is a compact RLOO policy-gradient loop (``K`` samples per prompt, each
   sample's baseline is the mean reward of the other ``K-1``). TRL's trainers were not
   used: this loop is deterministic, dependency-free and fits the CPU budget.
4. The lineage (base -> SFT -> RL), the way curated-sample SFT and RLHF are stacked:
   ``sft`` fine-tunes the base on the world's stories filtered to those the reward likes
   (the top ``sft_keep`` of a fresh pool by the same VADER reward of the story after its
   opening); ``rl`` runs the same RL loop (same openings and seeds) from ``sft``, with the KL
   penalty to ``sft``. ``tuned`` (preset ``organism-rl-from-base``, also ``organism-tuned``)
   is the RL loop started from the base, kept so that "does SFT alone collapse?" is
   answered by measurement.
5. Measure the properties of every model (rewards, entropies, celebration share, exact
   chance distributions) on the same openings and chance scenes, with counts and bootstrap
   CIs; the per-unit values are kept (``measurements.parquet``) for stage attribution.

Everything is written to a versioned cache folder keyed by the generator version, the seed
and the hyperparameters, and named by the build's own weights (``shipped.weights_id``): a
build on another CPU gets other weights and so another name. The demo and the presets load
the shipped build instead (``shipped_organism``), the same weights on every machine. A
build is made in a temporary folder and renamed into place at the end, so a half-finished
build is never taken for a finished one.
"""


import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from difflens._io import rich_progress
from difflens.models.presets import cache_dir, quiet_transformers
from difflens.organism import world as W
from difflens.organism.config import (  # re-exported: the build's names, as before
    BUILD_FORMAT,
    LINEAGE,
    MODEL_FOLDERS,
    PROPERTY_LABELS,
    OrganismConfig,
)
from difflens.organism.measure import measure
from difflens.organism.training import (  # re-exported: the recipe's steps
    curated_stories,
    reward_of_story,
    rl_tune,
    sft_tune,
    token_blocks,
    train_base,
    train_tokenizer,
    validation_loss,
)

__all__ = ["BUILD_FORMAT", "LINEAGE", "MODEL_FOLDERS", "PROPERTY_LABELS", "Organism",
           "OrganismConfig", "build_organism", "curated_stories", "find_organism",
           "load_organism", "shipped_organism",
           "organism_dir", "organism_folder", "reward_of_story", "rl_tune", "sft_tune",
           "train_base", "train_tokenizer"]



@dataclasses.dataclass(frozen=True)
class Organism:
    """A finished organism build on disk."""

    path: Path
    config: OrganismConfig

    @property
    def base_path(self) -> Path:
        return self.path / "base"

    @property
    def tuned_path(self) -> Path:
        return self.path / "tuned"

    def model_path(self, name: str) -> Path:
        """The folder of lineage model ``name`` (base, sft, rl, rl-from-base)."""
        if name not in MODEL_FOLDERS:
            raise KeyError(f"the organism has no model {name!r}; it has "
                           f"{', '.join(MODEL_FOLDERS)}")
        return self.path / MODEL_FOLDERS[name]

    @property
    def model_paths(self) -> dict[str, Path]:
        """Every model's folder, by lineage name."""
        return {name: self.model_path(name) for name in MODEL_FOLDERS}

    def measurements(self) -> Any:
        """Per-unit measured values (``metric, unit, model, value``): every model on the same
        openings, texts and chance scenes, for paired stage attribution."""
        import pandas as pd

        return pd.read_parquet(self.path / "measurements.parquet")

    @property
    def properties(self) -> dict[str, Any]:
        """The measured properties (``properties.json``), every value with a CI an estimate
        ``{value, ci_low, ci_high, n, resampled}`` (a build of an older difflens is read in
        that spelling too)."""
        from difflens.analysis.summary_spelling import respell

        return dict(respell(json.loads((self.path / "properties.json").read_text())))

    @property
    def build_info(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "build.json").read_text()))

    @property
    def organism_id(self) -> str:
        """``w`` and 12 hex digits naming the four models' weights (``shipped.weights_id``);
        a build of an older difflens that did not record it is hashed on reading."""
        from difflens.organism.shipped import model_weights, weights_id

        info = self.build_info
        return str(info.get("organism_id") or weights_id(model_weights(self.path)))

    @property
    def shipped(self) -> bool:
        """Whether this is the organism difflens ships."""
        from difflens.organism.shipped import SHIPPED_ROOT

        return self.path.resolve().parent == SHIPPED_ROOT

    def ground_truth_files(self) -> dict[str, str]:
        gt = self.path / "ground_truth"
        return {p.stem: str(p) for p in sorted(gt.iterdir())}


def organism_dir(config: OrganismConfig) -> Path:
    """Where builds of ``config`` go: ``<cache>/organism/v<generator>-seed<seed>-<key>``; a
    finished build is stored beside it as ``<that>-<weights id>``, named by its own weights
    (``shipped.weights_id``), so a build whose weights differ never takes another's name."""
    return cache_dir() / "organism" / f"v{W.GENERATOR_VERSION}-seed{config.seed}-{config.key()}"


def find_organism(config: OrganismConfig | None = None) -> Organism | None:
    """The finished build of ``config`` (default: the default recipe) in the cache, or None;
    the newest when several builds of it (from other machines) share the cache."""
    cfg = config or OrganismConfig()
    prefix = organism_dir(cfg)
    found = sorted((p for p in prefix.parent.glob(f"{prefix.name}-w*")
                    if (p / "build.json").is_file()),
                   key=lambda p: (p / "build.json").stat().st_mtime_ns)
    return Organism(found[-1], cfg) if found else None


def shipped_organism(small: bool = False) -> Organism:
    """The organism difflens ships (``organism.shipped``): what the demo and the presets
    ``organism-*`` load unless a build is asked for (``small``: the reduced recipe's, which
    the tests and ``difflens demo --small`` run on)."""
    from difflens.organism.shipped import SHIPPED_CONFIGS, SHIPPED_ROOT, manifest

    name = "small" if small else "default"
    manifest(SHIPPED_ROOT / name)  # a one-line error when the shipped files are missing
    return Organism(SHIPPED_ROOT / name, SHIPPED_CONFIGS[name])


def load_organism(config: OrganismConfig | None = None, *, small: bool = False,
                  progress: bool = False) -> Organism:
    """The shipped organism (``config`` None; ``small``: the reduced one), or the build of
    ``config`` (built first when the cache has none)."""
    if config is None:
        return shipped_organism(small)
    return build_organism(config, progress=progress)


def _opening(story: W.Story) -> str:
    return story.sentences[0]


def build_organism(config: OrganismConfig | None = None, *, progress: bool = False,
                   force: bool = False) -> Organism:
    """Train the organism for ``config`` (default: the default recipe, seed 0) from scratch,
    or return its cached build. The build is stored under its own weights' id
    (``organism_dir``); ``build.json`` records the id, each model's weights hash and, for the
    shipped recipe, how far the weights and properties land from the shipped build."""
    cfg = config or OrganismConfig()
    cached = find_organism(cfg)
    if cached is not None and not force:
        return cached
    from difflens._io import write_json_atomic
    from difflens.organism import shipped

    prefix = organism_dir(cfg)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-build-", dir=prefix.parent))
    times: dict[str, float] = {}
    try:
        with rich_progress(progress) as prog:
            t0 = time.perf_counter()
            train = W.generate_stories(cfg.n_train_stories, seed=cfg.seed)
            val = W.generate_stories(cfg.n_val_stories, cfg.seed + 1_000_003)
            tokenizer = train_tokenizer([s.text for s in train], cfg.vocab_size)
            base, base_info = train_base(cfg, tokenizer, [s.text for s in train],
                                         [s.text for s in val], prog)
            times["base_s"] = time.perf_counter() - t0
            _save(base, tokenizer, tmp / "base")

            t1 = time.perf_counter()
            rl_stories = W.generate_stories(max(200, cfg.rl_prompts * 8), cfg.seed + 2_000_003)
            rl_openings = [_opening(s) for s in rl_stories]
            tuned, curves = rl_tune(cfg, base, tokenizer, rl_openings, prog)
            times["tuned_s"] = time.perf_counter() - t1
            _save(tuned, tokenizer, tmp / "tuned")

            t1 = time.perf_counter()
            curated, sft_info = curated_stories(cfg)
            sft, sft_losses = sft_tune(cfg, base, tokenizer, curated, prog)
            sft_info["train_loss"] = sft_losses
            val_blocks = token_blocks(tokenizer, [s.text for s in val], cfg.seq_len)
            sft_info["val_loss"] = validation_loss(sft, val_blocks)
            times["sft_s"] = time.perf_counter() - t1
            _save(sft, tokenizer, tmp / "sft")
            t1 = time.perf_counter()
            rl, rl_sft_curves = rl_tune(cfg, sft, tokenizer, rl_openings, prog)
            times["rl_s"] = time.perf_counter() - t1
            _save(rl, tokenizer, tmp / "rl")

            gt = tmp / "ground_truth"
            gt.mkdir()
            _write_ground_truth(gt, val, cfg)
            write_json_atomic(tmp / "rl_curves.json", curves)
            write_json_atomic(tmp / "rl_from_sft_curves.json", rl_sft_curves)
            write_json_atomic(tmp / "sft.json", sft_info)
            _write_curves(tmp, curves, base_info, rl_sft_curves, sft_losses)

            t2 = time.perf_counter()
            props, units = measure_build(cfg, tmp, prog, tmp)
            from difflens._io import write_parquet_atomic

            write_parquet_atomic(tmp / "measurements.parquet", units)
            times["measure_s"] = time.perf_counter() - t2
            props["base_val_loss"] = base_info["val_loss"]
            write_json_atomic(tmp / "properties.json", props)
            weights = shipped.model_weights(tmp)
            ours = shipped.shipped_dir(cfg)
            vs_shipped = (shipped.distance_to_shipped(tmp, ours)
                          if ours is not None and (ours / "manifest.json").is_file() else None)
            write_json_atomic(tmp / "build.json", {
                "config": dataclasses.asdict(cfg), "key": cfg.key(),
                "generator_version": W.GENERATOR_VERSION, "times_s": times,
                "base": {k: v for k, v in base_info.items() if k != "train_loss"},
                "torch_threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "organism_id": shipped.weights_id(weights), "weights_sha256": weights,
                "vs_shipped": vs_shipped,
            })
        target = prefix.parent / f"{prefix.name}-{shipped.weights_id(weights)}"
        for old in prefix.parent.glob(f"{prefix.name}-w*") if force else ():
            shutil.rmtree(old)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Organism(target, cfg)


def measure_build(cfg: OrganismConfig, folder: Path, progress: Any, work: Path
                  ) -> tuple[dict[str, Any], Any]:
    """Measure the four models of the build at ``folder`` on the recipe's own held-out
    openings and chance scenes (``measure``): what a build stores in ``properties.json``
    and ``measurements.parquet``, and what a test re-measures on the shipped build to show
    how far inference on another CPU moves it."""
    eval_stories = W.generate_stories(cfg.n_eval, cfg.seed + 3_000_003)
    chances = W.chance_prompts(cfg.n_eval, cfg.seed + 4_000_003)
    return measure(cfg, {PROPERTY_LABELS[n]: folder / MODEL_FOLDERS[n] for n in
                         ("base", "rl-from-base", "sft", "rl")},
                   [_opening(s) for s in eval_stories], chances, progress, work)


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    with quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def _write_ground_truth(gt: Path, val: Sequence[W.Story], cfg: OrganismConfig) -> None:
    from difflens._io import write_bytes_atomic, write_json_atomic

    lines = [json.dumps({"text": s.text, "sentences": s.sentences, "themes": s.themes,
                         "chance": [dataclasses.asdict(c) for c in s.chance]})
             for s in val]
    write_bytes_atomic(gt / "heldout_stories.jsonl", ("\n".join(lines) + "\n").encode())
    states, matrix = W.transition_matrix()
    write_json_atomic(gt / "transition_matrix.json",
                      {"states": states, "start": W.START, "matrix": matrix})
    write_json_atomic(gt / "chance_scenes.json", {
        slot: {"kind": kind, "outcomes": list(outs), "distribution": "uniform",
               "p": 1 / len(outs)} for slot, (outs, kind) in W.CHANCE_SLOTS.items()})
    write_json_atomic(gt / "world.json", {"themes": W.THEMES, "templates": W.TEMPLATES,
                                          "generator_version": W.GENERATOR_VERSION,
                                          "seed": cfg.seed})


def _write_curves(folder: Path, curves: dict[str, list[float]], base_info: dict[str, Any],
                  rl_sft_curves: dict[str, list[float]], sft_losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(curves)
    df.insert(0, "step", range(len(df)))
    df.to_csv(folder / "rl_curves.csv", index=False)
    sft_df = pd.DataFrame(rl_sft_curves)
    sft_df.insert(0, "step", range(len(sft_df)))
    sft_df.to_csv(folder / "rl_from_sft_curves.csv", index=False)
    pd.DataFrame({"step": range(len(sft_losses)), "loss": sft_losses}).to_csv(
        folder / "sft_curve.csv", index=False)
    # the demo report's colours (difflens.report.figures, a layer above): the lineage's sft
    # orange and rl green, rl-from-base purple
    c_tuned, c_sft, c_rl = "#8172b3", "#dd8452", "#55a868"
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    axes[0].plot(base_info["train_loss"], color="#555")
    axes[0].set(title=f"base training loss (val {base_info['val_loss']:.3f})", xlabel="step")
    axes[1].plot(sft_losses, color=c_sft)
    axes[1].set(title="SFT on curated stories: loss", xlabel="step")
    for d, label, color in ((df, "RL from base", c_tuned), (sft_df, "RL from SFT", c_rl)):
        axes[2].plot(d.step, d.reward, color=color, label=label)
        axes[3].plot(d.step, d.kl, color=color, label=label)
    axes[2].set(title="RL: mean VADER reward", xlabel="step")
    axes[3].set(title="RL: sampled KL to its start", xlabel="step")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "training_curves.png", dpi=110)
    plt.close(fig)


def organism_folder(which: str) -> Path:
    """The shipped organism's model folder (lineage name): what the presets
    ``organism-<name>`` resolve to (named in ``PROVIDED_PRESETS``, resolved on use)."""
    return shipped_organism().model_path(which)
