"""The organism's recipe as one frozen config (its key names the cached build), and the
names of its models."""

import dataclasses

from difflens._io import fingerprint
from difflens.organism import world as W

#: Version of what a build writes (files, properties); part of the cache key with the
#: world's generator version and the config.
BUILD_FORMAT = 3

#: The organism's models: lineage name -> folder. ``rl-from-base`` is the folder ``tuned``
#: (today's pair is ``base``/``tuned``).
MODEL_FOLDERS = {"base": "base", "sft": "sft", "rl": "rl", "rl-from-base": "tuned"}
#: The lineage the demo compares, in training order.
LINEAGE = ("base", "sft", "rl")
#: Labels of the measured properties (``properties.json``) of each model.
PROPERTY_LABELS = {"base": "base", "sft": "sft", "rl": "rl", "rl-from-base": "tuned"}


@dataclasses.dataclass(frozen=True)
class OrganismConfig:
    """Every knob of the organism build; all of them are in the cache key."""

    seed: int = 0
    """Seeds the corpus, the initialisation, the batches and the RL samples."""
    n_train_stories: int = 6000
    """Stories in the training corpus (~115 tokens each)."""
    n_val_stories: int = 300
    """Held-out stories for the validation loss and the ground-truth files."""
    vocab_size: int = 1024
    """BPE vocabulary size."""
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 344
    seq_len: int = 128
    """Training block length."""
    batch_size: int = 32
    train_steps: int = 450
    lr: float = 3e-3
    rl_steps: int = 80
    rl_prompts: int = 16
    """Openings per RL step."""
    rl_samples: int = 4
    """Samples per opening (RLOO group size)."""
    rl_new_tokens: int = 40
    rl_lr: float = 1e-3
    kl_coef: float = 0.05
    """Weight of the sampled KL(tuned ‖ base) penalty on the reward."""
    rl_min_tokens: int = 8
    """A completion that stops before this many tokens gets reward -1: an empty completion
    scores VADER 0, above the base's mean, and RL from the base otherwise learns to stop at
    once (measured: length 1.0 after 40 steps)."""
    sft_pool: int = 3000
    """Fresh world stories scored by the reward for the SFT set."""
    sft_keep: float = 0.25
    """Fraction of the pool the reward likes best, kept for SFT."""
    sft_steps: int = 120
    sft_lr: float = 1e-3
    n_eval: int = 200
    """Held-out openings and chance prompts measured (each)."""
    eval_new_tokens: int = 48

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and f.name not in ("seed", "kl_coef") and v <= 0:
                raise ValueError(f"OrganismConfig.{f.name} must be positive, got {v}")
        if not 0 < self.sft_keep <= 1:
            raise ValueError(f"sft_keep must be in (0, 1], got {self.sft_keep}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.rl_samples < 2:
            raise ValueError(f"rl_samples must be at least 2 (RLOO's baseline is the mean of the "
                             f"other samples of the same opening), got {self.rl_samples}")

    def key(self) -> str:
        return fingerprint({"generator": W.GENERATOR_VERSION, "build_format": BUILD_FORMAT,
                            **dataclasses.asdict(self)}, length=12)

    @classmethod
    def small(cls, seed: int = 0) -> "OrganismConfig":
        """A reduced build for tests: same pipeline, minutes become seconds."""
        return cls(seed=seed, n_train_stories=400, n_val_stories=40, vocab_size=384,
                   d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=64, batch_size=8,
                   train_steps=20, rl_steps=3, rl_prompts=4, rl_samples=2, rl_new_tokens=12,
                   sft_pool=80, sft_steps=4, rl_min_tokens=2, n_eval=12, eval_new_tokens=12)


