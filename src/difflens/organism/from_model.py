"""A lineage from any causal LM: ``difflens organism build --from MODEL`` applies the
organism's recipe to a model the user has: full fine-tuning, or (``lora_rank > 0``) one
LoRA adapter (peft, on every linear layer but the head) trained through the stages, each
stage saved as its adapter (a few MB, loaded as ``BASE+ADAPTER``).

- ``sft``: the base samples continuations of story openings; the reward (VADER compound of
  the continuation, as the organism's RL reward) scores them; the ``sft_keep`` share it
  likes best is the SFT set (opening + continuation), and a copy of the base is fine-tuned
  on it with the organism's training loop.
- ``rl``: RLOO from ``sft`` with a sampled KL penalty to ``sft``, the organism's
  ``training.rl_tune``; or
- ``dpo``: direct preference optimisation from ``sft`` (reference: ``sft``) on preference
  pairs (``--preferences FILE``: ``{prompt, chosen, rejected}`` or hh-rlhf transcripts),
  ``training.dpo_tune``.

The build is cached under ``<cache>/lineages/<name>-<key>``, the key a fingerprint of the
recipe and the base's weights and tokenizer hashes; ``lineage.json`` records the recipe, the
SFT set's reward threshold, the RL curves, the times and each model's mean reward on the
same held-out openings (paired, with bootstrap CIs): the reward that curated ``sft`` must
rise along the lineage (also as ``summary.json``, the name every command's output has).
The models are plain folders (``<build>/sft``, ``<build>/rl``) that ``difflens compare
--model base=MODEL --model sft=<build>/sft --model rl=<build>/rl`` loads; with LoRA they are
adapter folders, loaded as ``MODEL+<build>/sft`` (``LineageBuild.model_spec``). Each stage is
also a preset, ``<build folder name>-<stage>`` (``difflens list presets``).
"""

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflens._io import fingerprint, rich_progress, write_json_atomic
from difflens.analysis.bootstrap import bootstrap_mean, bootstrap_paired
from difflens.errors import InputError
from difflens.models.loading import LoadedModel, load_model, wrap_model
from difflens.models.presets import cache_dir, quiet_transformers
from difflens.organism import world as W
from difflens.organism.config import OrganismConfig
from difflens.organism.training import (
    _train_lm,
    _vader,
    completion_texts,
    dpo_tune,
    preference_margins,
    rl_tune,
    sample,
    token_blocks,
)

STAGES = ("sft", "rl", "dpo")
#: The stage orders a build takes: sft alone, then rl or dpo after it.
ORDERS = (("sft",), ("sft", "rl"), ("sft", "dpo"))
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class LineageRecipe:
    """Every knob of a lineage build (all in its cache key)."""

    seed: int = 0
    n_openings: int = 400
    """Story openings the base continues for the SFT pool (one sample each)."""
    new_tokens: int = 48
    sft_keep: float = 0.25
    """Share of the pool the reward likes best, kept for SFT."""
    sft_steps: int = 120
    sft_lr: float = 5e-4
    batch_size: int = 16
    seq_len: int = 128
    rl_steps: int = 60
    rl_prompts: int = 8
    rl_samples: int = 4
    rl_new_tokens: int = 40
    rl_lr: float = 5e-4
    kl_coef: float = 0.05
    rl_min_tokens: int = 8
    n_eval: int = 96
    """Held-out openings each model's reward is measured on."""
    dpo_steps: int = 60
    dpo_lr: float = 5e-5
    dpo_beta: float = 0.1
    dpo_batch: int = 8
    dpo_pairs: int = 512
    """Preference pairs DPO trains on (the file's first N usable pairs)."""
    dpo_max_len: int = 256
    dpo_eval_pairs: int = 64
    """Held-out pairs (the next N) each model's preference margin is measured on."""
    lora_rank: int = 0
    """0: full fine-tuning; r > 0: a LoRA adapter of rank r, continued through the stages."""
    lora_alpha: int = 16

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("seed", "kl_coef", "lora_rank") and v <= 0:
                raise InputError(f"LineageRecipe.{f.name} must be positive, got {v}")
        if not 0 < self.sft_keep <= 1:
            raise InputError(f"sft_keep must be in (0, 1], got {self.sft_keep}")
        if self.lora_rank < 0:
            raise InputError(f"lora_rank must be 0 (full fine-tuning) or positive, got "
                             f"{self.lora_rank}")

    @classmethod
    def small(cls, seed: int = 0) -> "LineageRecipe":
        """A reduced recipe: seconds on a tiny model (tests)."""
        return cls(seed=seed, n_openings=96, new_tokens=24, sft_steps=30, rl_steps=4,
                   rl_prompts=4, rl_samples=2, rl_new_tokens=16, n_eval=48, dpo_steps=4,
                   dpo_batch=4, dpo_pairs=32, dpo_max_len=128, dpo_eval_pairs=16)

    def rl_config(self) -> OrganismConfig:
        return OrganismConfig(seed=self.seed, rl_steps=self.rl_steps,
                              rl_prompts=self.rl_prompts, rl_samples=self.rl_samples,
                              rl_new_tokens=self.rl_new_tokens, rl_lr=self.rl_lr,
                              kl_coef=self.kl_coef, rl_min_tokens=self.rl_min_tokens)


def read_recipe(path: str | Path, base: LineageRecipe | None = None) -> LineageRecipe:
    """``base`` (default ``LineageRecipe()``) with the fields a TOML file sets
    (``lora_rank = 8``); a key that is no field, or a file that is no TOML, is one line
    naming the file."""
    from difflens._config import read_toml

    p = Path(path)
    raw = read_toml(p, example="LineageRecipe fields, lora_rank = 8")
    start = base or LineageRecipe()
    fields = {f.name: type(getattr(start, f.name)) for f in dataclasses.fields(LineageRecipe)}
    for key, value in raw.items():
        if key not in fields:
            raise InputError(f"{p}: no recipe field {key!r}; the fields are "
                             f"{', '.join(fields)}")
        want = fields[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                want is int and not isinstance(value, int)):
            raise InputError(f"{p}: {key} takes {'an integer' if want is int else 'a number'}"
                             f", got {value!r}")
    return dataclasses.replace(start, **{k: fields[k](v) for k, v in raw.items()})


@dataclasses.dataclass(frozen=True)
class LineageBuild:
    """A finished build: ``path/sft``, ``path/rl`` and ``path/lineage.json``."""

    path: Path
    base: str

    def model_path(self, stage: str) -> Path:
        return self.path / stage

    def model_spec(self, stage: str) -> str:
        """What ``--model`` takes for ``stage``: its folder, or ``BASE+ADAPTER`` (LoRA)."""
        folder = self.model_path(stage)
        return f"{self.info['base_spec']}+{folder}" if self.info.get("lora") else str(folder)

    @property
    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "lineage.json").read_text()))


def _openings(n: int, seed: int) -> list[str]:
    """Story openings (the first sentence of world stories), seeded."""
    return [s.sentences[0] for s in W.generate_stories(n, seed)]


def lineage_dir(base: LoadedModel, recipe: LineageRecipe, stages: Sequence[str],
                preferences: Sequence[Any] = ()) -> Path:
    key = fingerprint({"format": FORMAT, "recipe": dataclasses.asdict(recipe),
                       "stages": list(stages), "weights": base.identity.weights_sha256,
                       "tokenizer": base.identity.tokenizer_sha256,
                       "preferences": fingerprint([dataclasses.asdict(p) for p in preferences])
                       if preferences else None}, length=12)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in
                   Path(base.identity.name).name)[:40]
    return cache_dir() / "lineages" / f"{name}-{key}"


def _rewards(lm: LoadedModel, openings: Sequence[str], n_new: int, seed: int) -> np.ndarray:
    vader = _vader()
    seqs, mask, width = sample(lm, openings, n_new, seed=seed)
    return np.array([vader.polarity_scores(t)["compound"]
                     for t in completion_texts(lm.tokenizer, seqs, mask, width)])


def _lora_config(recipe: LineageRecipe) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def _trainable(model: Any, recipe: LineageRecipe) -> Any:
    """A copy of ``model`` to train: all of it, or (LoRA) the same class with LoRA layers
    injected and only those trainable (peft's ``get_peft_model``; the plain model that holds
    them is returned, so training and sampling see an ordinary causal LM)."""
    out = copy.deepcopy(model)
    if not recipe.lora_rank:
        return out
    from peft import get_peft_model

    return get_peft_model(out, _lora_config(recipe)).get_base_model()


def _save(model: Any, tokenizer: Any, folder: Path, *, base_model: Any = None,
          recipe: LineageRecipe | None = None, base_spec: str = "") -> None:
    """Save a stage: the whole model and tokenizer, or (LoRA) its adapter: a fresh peft
    wrapper of ``base_model`` given the trained LoRA weights, saved with peft's own
    ``save_pretrained`` (the base named ``base_spec``)."""
    with quiet_transformers():
        if recipe is None or not recipe.lora_rank:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            return
        from peft import get_peft_model

        fresh = get_peft_model(copy.deepcopy(base_model), _lora_config(recipe))
        lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        got = fresh.get_base_model().load_state_dict(lora, strict=False)
        missing = [k for k in got.missing_keys if "lora_" in k]
        if got.unexpected_keys or missing or not lora:
            raise RuntimeError(f"LoRA weights do not fit a fresh adapter: "
                               f"{(got.unexpected_keys + missing)[:3]}")
        fresh.peft_config["default"].base_model_name_or_path = base_spec
        fresh.save_pretrained(folder)


def build_lineage_from(model: str, recipe: LineageRecipe | None = None, *,
                       stages: Sequence[str] = ("sft", "rl"),
                       preferences: str | Path | None = None, progress: bool = False,
                       force: bool = False) -> LineageBuild:
    """Build (or reuse) ``stages`` of the lineage of ``model`` (a preset, folder, hub id or
    ``BASE+ADAPTER``); see the module docstring. Every input is checked (the model, the
    adapter, the preference file) before any training."""
    from difflens.inputs.labelled import read_preferences

    recipe = recipe or LineageRecipe()
    if tuple(stages) not in ORDERS:
        raise InputError(f"stages must be one of {', '.join(','.join(o) for o in ORDERS)}; "
                         f"got {','.join(stages)}")
    if "dpo" in stages and preferences is None:
        raise InputError("the dpo stage needs preference pairs: --preferences FILE "
                         "({prompt, chosen, rejected} or hh-rlhf transcripts, JSONL)")
    read = (read_preferences(preferences, limit=recipe.dpo_pairs + recipe.dpo_eval_pairs)
            if "dpo" in stages and preferences is not None else [])
    prefs, held_prefs = read[:recipe.dpo_pairs], read[recipe.dpo_pairs:]
    base = load_model(model, device="cpu", dtype="float32")
    # the base as a model spec another directory can load (a path made absolute)
    base_spec = str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() \
        else model
    saved_tokenizer = copy.deepcopy(base.tokenizer)  # what the tuned folders ship, as given
    if base.tokenizer.pad_token_id is None:  # batched sampling pads; our copy pads with EOS
        if base.tokenizer.eos_token is None:
            raise InputError(f"{model}: its tokenizer has neither a pad nor an EOS token; "
                             f"batched sampling needs one")
        base.tokenizer.pad_token = base.tokenizer.eos_token
    base.tokenizer.padding_side = "left"  # our own copy: sampling pads the openings left
    target = lineage_dir(base, recipe, stages, read)
    if (target / "lineage.json").is_file() and not force:
        return LineageBuild(target, model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-lineage-", dir=target.parent))
    times: dict[str, float] = {}
    save: dict[str, Any] = {"base_model": base.model, "recipe": recipe, "base_spec": base_spec}
    info: dict[str, Any] = {"base": model, "base_spec": base_spec,
                            "lora": {"rank": recipe.lora_rank, "alpha": recipe.lora_alpha,
                                     "targets": "all-linear"} if recipe.lora_rank else None,
                            "base_identity": base.identity.to_dict(),
                            "recipe": dataclasses.asdict(recipe), "stages": list(stages),
                            "format": FORMAT, "torch_threads": torch.get_num_threads()}
    try:
        with rich_progress(progress) as bar:
            t0 = time.perf_counter()
            pool = _openings(recipe.n_openings, recipe.seed + 7_000_003)
            seqs, mask, width = sample(base, pool, recipe.new_tokens, seed=recipe.seed)
            texts = completion_texts(base.tokenizer, seqs, mask, width)
            vader = _vader()
            reward = np.array([vader.polarity_scores(t)["compound"] for t in texts])
            keep = np.sort(np.argsort(-reward, kind="stable")[
                :max(1, round(recipe.sft_keep * len(pool)))])
            sft_texts = [pool[i] + texts[i] for i in keep]
            blocks = token_blocks(base.tokenizer, sft_texts, recipe.seq_len)
            if len(blocks) == 0:
                raise InputError("the SFT set is shorter than one training block; raise "
                                 "n_openings or new_tokens")
            sft = _trainable(base.model, recipe)
            losses = _train_lm(sft, blocks, steps=recipe.sft_steps, lr=recipe.sft_lr,
                               batch_size=recipe.batch_size, seed=recipe.seed,
                               advance=bar("SFT on the base's best samples",
                                           recipe.sft_steps))
            _save(sft, saved_tokenizer, tmp / "sft", **save)
            times["sft_s"] = time.perf_counter() - t0
            info["sft"] = {"pool": len(pool), "kept": len(keep),
                           "reward_threshold": float(reward[keep].min()),
                           "reward_pool_mean": float(reward.mean()),
                           "reward_kept_mean": float(reward[keep].mean()),
                           "train_loss": losses}
            models = {"base": base, "sft": wrap_model(sft, base.tokenizer, name="sft")}
            if "rl" in stages:
                t1 = time.perf_counter()
                rl, curves = rl_tune(recipe.rl_config(), sft, base.tokenizer,
                                     _openings(max(200, recipe.rl_prompts * 8),
                                               recipe.seed + 8_000_003), bar)
                _save(rl, saved_tokenizer, tmp / "rl", **save)
                times["rl_s"] = time.perf_counter() - t1
                info["rl"] = {"curves": curves}
                models["rl"] = wrap_model(rl, base.tokenizer, name="rl")
            if "dpo" in stages:
                t1 = time.perf_counter()
                dpo, curves = dpo_tune(sft, base.tokenizer, prefs, steps=recipe.dpo_steps,
                                       lr=recipe.dpo_lr, beta=recipe.dpo_beta,
                                       batch_size=recipe.dpo_batch, seed=recipe.seed,
                                       max_len=recipe.dpo_max_len, progress=bar)
                _save(dpo, saved_tokenizer, tmp / "dpo", **save)
                times["dpo_s"] = time.perf_counter() - t1
                info["dpo"] = {"curves": curves, "pairs": len(prefs),
                               "preferences": str(preferences)}
                models["dpo"] = wrap_model(dpo, base.tokenizer, name="dpo")
            t2 = time.perf_counter()
            held = _openings(recipe.n_eval, recipe.seed + 9_000_007)
            got = {k: _rewards(lm, held, recipe.new_tokens, recipe.seed + 11)
                   for k, lm in models.items()}
            info["reward"] = {k: bootstrap_mean(v, seed=recipe.seed,
                                                resampled="openings").to_json()
                              for k, v in got.items()}
            names = list(models)
            info["reward_change"] = {f"{a}->{b}": bootstrap_paired(
                got[b], got[a], seed=recipe.seed, resampled="openings").to_json()
                for a, b in zip(names, names[1:], strict=False)}
            if held_prefs:  # what DPO optimises, on pairs it never saw
                margins = {k: preference_margins(lm.model, base.tokenizer, held_prefs,
                                                 max_len=recipe.dpo_max_len)
                           for k, lm in models.items()}
                info["preference_margin"] = {k: bootstrap_mean(
                    v, seed=recipe.seed, resampled="pairs").to_json()
                    for k, v in margins.items()}
                info["preference_margin_change"] = {f"{a}->{b}": bootstrap_paired(
                    margins[b], margins[a], seed=recipe.seed, resampled="pairs").to_json()
                    for a, b in zip(names, names[1:], strict=False)}
                info["dpo"]["held_out_pairs"] = len(held_prefs)
            times["measure_s"] = time.perf_counter() - t2
            info["times_s"] = times
            write_json_atomic(tmp / "lineage.json", info)
            write_json_atomic(tmp / "summary.json", info)  # the output convention's name
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return LineageBuild(target, model)


__all__ = ["ORDERS", "STAGES", "LineageBuild", "LineageRecipe", "build_lineage_from",
           "lineage_dir", "read_recipe"]
