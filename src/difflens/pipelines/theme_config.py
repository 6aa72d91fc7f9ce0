"""The configuration of ``difflens themes`` (re-exported by :mod:`difflens.pipelines.themes`),
in its own module so that the step modules can import it without a cycle."""

import dataclasses

from difflens.analysis.embeddings import DEFAULT_ENCODER, Encoder
from difflens.errors import InputError


@dataclasses.dataclass(frozen=True)
class ThemesConfig:
    """Everything a themes run depends on."""

    prompts: tuple[str, ...] = ()
    k_samples: int = 16
    max_new_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 32
    chat: bool = False
    segment: str = "sentences"
    window: int = 16
    encoder: Encoder = DEFAULT_ENCODER
    """A sentence-transformers name or folder, or a callable ``texts -> array``."""
    method: str = "kmeans"
    k_min: int = 4
    k_max: int = 16
    min_cluster_size: int = 15
    merge_repeats: bool = True
    max_chain: int = 3
    layers: str = "all"
    m_act: int = 8
    """States of the last ``m_act`` prompt tokens feed the chain transformer."""
    test_fraction: float = 0.3
    n_boot: int = 1000
    truth: tuple[str, ...] | None = None
    """Organism: the true theme of each prompt's last sentence (enables ground truth)."""
    labeller_url: str = ""
    """An OpenAI-compatible endpoint that names the themes (off when empty)."""
    labeller_model: str = ""
    resample_seed: int | None = None
    """consistency: the sampling seed of the second, independent sample set (default: seed +
    100003)."""
    groups: tuple[str, ...] | None = None
    """generalisation: a group per prompt (its source or category); each group is held out in
    turn. Default: the organism's truth (the theme of the prompt's last sentence)."""

    def __post_init__(self) -> None:
        if self.k_samples < 1:
            raise InputError(f"K (samples per prompt) must be >= 1, got {self.k_samples}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise InputError("a prompt is empty; every prompt needs text")
        if self.truth is not None and len(self.truth) != len(self.prompts):
            raise InputError("truth needs one theme per prompt")
        if self.groups is not None and len(self.groups) != len(self.prompts):
            raise InputError(f"groups needs one group per prompt: {len(self.groups)} groups for "
                             f"{len(self.prompts)} prompts")
