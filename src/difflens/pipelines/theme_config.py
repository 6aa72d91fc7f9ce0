"""The configuration of ``difflens themes`` (re-exported by ``difflens.pipelines.themes``),
in its own module so that the step modules can import it without a cycle."""

import dataclasses
from typing import ClassVar

from difflens._config import option
from difflens.errors import InputError
from difflens.models.encoders import DEFAULT_ENCODER, Encoder

STEPS = ("sample", "fit", "chains", "predict", "evaluate")
EXTRA_STEPS = ("consistency", "generalisation")


@dataclasses.dataclass(frozen=True)
class ThemesConfig:
    """Everything a themes run depends on."""

    steps: tuple[str, ...] = option(STEPS, flag="--steps", cli=False, help="Steps to run: "
                                    f"{', '.join(STEPS + EXTRA_STEPS)} (the CLI's verb "
                                    "chooses them).")
    prompts: tuple[str, ...] = ()
    """The prompts of the run: set by ``run_themes`` from its
    ``prompts``."""
    k_samples: int = option(16, flag="--samples", help="Samples per prompt (and model).")
    max_new_tokens: int = option(48, flag="--max-new-tokens", help="Tokens per sample.")
    temperature: float = option(1.0, flag="--temperature", help="Sampling temperature.")
    seed: int = option(0, flag="--seed", help="Seed of sampling, splits and bootstraps.")
    batch_size: int = option(32, flag="--batch-size", help="Most inputs per forward pass.")
    chat: bool = option(False, flag="--chat", help="Wrap prompts in the chat template.")
    segment: str = option("sentences", flag="--segment", help="sentences | tokens (with "
                          "--window).")
    window: int = option(16, flag="--segment-window", help="Tokens per segment with "
                         "--segment tokens.")
    encoder: Encoder = option(DEFAULT_ENCODER, flag="--encoder", help="Sentence encoder "
                              "(name or folder).")
    """A sentence-transformers name or folder, or a callable ``texts -> array``."""
    method: str = option("kmeans", flag="--method", help="kmeans | hdbscan.")
    k_min: int = option(4, flag="--k-min", help="k-means: fewest themes.")
    k_max: int = option(16, flag="--k-max", help="k-means: most themes.")
    min_cluster_size: int = option(15, flag="--min-cluster-size", help="HDBSCAN: smallest "
                                   "theme.")
    merge_repeats: bool = option(True, flag="--merge-repeats/--keep-repeats",
                                 help="Merge consecutive repeats in chains.")
    max_chain: int = option(3, flag="--max-chain", help="Chain length m for distributions.")
    layers: str = option("all", flag="--layers", help="Layers for the probes.")
    m_act: int = option(8, flag="--m-act", help="Last prompt states fed to the transformer.")
    """States of the last ``m_act`` prompt tokens feed the chain transformer."""
    transformer_steps: int = option(400, flag="--transformer-steps", help="Training steps of "
                                    "the chain transformer.")
    test_fraction: float = option(0.3, flag="--test-fraction", help="Held-out share of "
                                  "prompts.")
    n_boot: int = option(1000, flag="--n-boot", help="Bootstrap resamples of each CI.")
    truth: tuple[str, ...] | None = None
    """Organism: the true theme of each prompt's last sentence (enables ground truth)."""
    labeller_url: str = option("", flag="--labeller-url", help="OpenAI-compatible endpoint "
                               "to name themes.")
    """An OpenAI-compatible endpoint that names the themes (off when empty)."""
    labeller_model: str = option("", flag="--labeller-model", help="Model name for the "
                                 "labeller.")
    resample_seed: int | None = option(None, flag="--resample-seed", help="consistency: the "
                                       "seed of the second sample set (default: seed + "
                                       "100003).")
    """consistency: the sampling seed of the second, independent sample set (default: seed +
    100003)."""
    groups: tuple[str, ...] | None = None
    """generalisation: a group per prompt (its source or category); each group is held out in
    turn. Default: the organism's truth (the theme of the prompt's last sentence)."""

    #: Python names of earlier releases -> option names (read with a warning).
    RENAMED: ClassVar[dict[str, str]] = {"k_samples": "samples", "window": "segment_window"}

    @classmethod
    def quick(cls) -> "ThemesConfig":
        """``difflens compare``'s lighter setting: 8 samples per prompt."""
        return cls(k_samples=8)

    def __post_init__(self) -> None:
        if self.k_samples < 1:
            raise InputError(f"K (samples per prompt) must be >= 1, got {self.k_samples}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        unknown = [s for s in self.steps if s not in STEPS + EXTRA_STEPS]
        if unknown:
            raise InputError(f"unknown step(s) {unknown}; choose among "
                             f"{', '.join(STEPS + EXTRA_STEPS)}")
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise InputError("a prompt is empty; every prompt needs text")
        if self.truth is not None and len(self.truth) != len(self.prompts):
            raise InputError("truth needs one theme per prompt")
        if self.groups is not None and len(self.groups) != len(self.prompts):
            raise InputError(f"groups needs one group per prompt: {len(self.groups)} groups for "
                             f"{len(self.prompts)} prompts")
