"""``difflens discover``'s settings and inputs: ``DiscoverConfig`` (every default once),
the built-in unrelated texts and neutral openings, and the reader of a user's texts."""

import dataclasses
from importlib import resources
from pathlib import Path

from difflens._config import option
from difflens.errors import InputError
from difflens.inputs.prompts import read_prompts
from difflens.models.encoders import DEFAULT_ENCODER

METHODS = ("adl", "mining", "amplify", "crosscoder", "diff_sae")
"""Every method ``--methods`` takes; ``DiscoverConfig.methods`` runs the first three by
default (the dictionary methods train models: opt-in)."""


def _data(name: str) -> Path:
    return Path(str(resources.files("difflens") / "data" / name))


def builtin_texts() -> list[str]:
    """The unrelated texts difflens ships (everyday prose on no one topic)."""
    return read_prompts(_data("discover_texts.jsonl"), field="text")


def builtin_openings() -> list[str]:
    """The neutral openings the models' own samples start from."""
    return read_prompts(_data("discover_openings.jsonl"))


def read_texts(path: str | Path) -> list[str]:
    """Texts from a file: ``.txt`` one a line (blank lines skipped), ``.jsonl``/``.json``/
    ``.csv`` with a ``text`` field; an empty file, or one with no usable line, is an error."""
    from difflens._io import read_utf8

    path = Path(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        texts = [line.replace("\\n", "\n") for line in read_utf8(path).splitlines()
                 if line.strip()]
    else:
        texts = [t for t in read_prompts(path, field="text") if t.strip()]
    if not texts:
        raise InputError(f"{path}: no usable text (the file is empty or every line is blank); "
                         f"give one text a line (.txt) or objects with a 'text' field (.jsonl)")
    return texts


@dataclasses.dataclass(frozen=True)
class DiscoverConfig:
    """Every setting of a discover run (each default here only; the CLI's options are these
    fields under their flags)."""

    methods: tuple[str, ...] = option(METHODS[:3], flag="--methods", help="Methods to run "
                                      "(default adl, mining, amplify; crosscoder and "
                                      "diff_sae train dictionaries and are opt-in; the "
                                      "logodds baseline always runs).")
    layer: int | None = option(None, flag="--layer", help="ADL's layer (default: the "
                               "middle; 0 = embeddings).")
    positions: int = option(5, flag="--positions", help="ADL: the first k positions of each "
                            "text averaged.")
    top_k: int = option(20, flag="--top-k", help="Mining: tokens kept per position and "
                        "direction.")
    n_words: int = option(20, flag="--n-words", help="Words in each method's top_words.")
    scales: tuple[float, ...] = option((0.5, 1.0, 1.5, 2.0, 3.0, 4.0), flag="--scales",
                                       help="Patchscope: delta scaled to these multiples of "
                                       "the tuned model's mean state norm.")
    strengths: tuple[float, ...] = option((0.5, 1.0, 2.0, 4.0, 8.0), flag="--strengths",
                                          help="Steering grid, in multiples of the tuned "
                                          "model's mean state norm.")
    coherence_factor: float = option(2.0, flag="--coherence-factor", help="A steered sample "
                                     "stays coherent while its perplexity under the base is "
                                     "at most this factor times the unsteered sample's.")
    alphas: tuple[float, ...] = option((0.0, 0.5, 1.0, 2.0, 4.0), flag="--alphas",
                                       help="Amplification grid (0 = the tuned model).")
    samples: int = option(8, flag="--samples", help="Samples per opening (per model and "
                          "alpha).")
    max_new_tokens: int = option(30, flag="--max-new-tokens", help="Tokens per sample.")
    n_topics: int = option(5, flag="--topics", help="Mining: NMF topics.")
    max_tokens: int = option(96, flag="--max-tokens", help="Tokens read per text.")
    random_vectors: int = option(4, flag="--random-vectors", help="Random directions of "
                                 "delta's norm in the causal check.")
    max_finetune: int = option(128, flag="--max-finetune", help="Fine-tuning texts used "
                               "(the first N): the causal check and steered-text "
                               "similarity.")
    encoder: str = option(DEFAULT_ENCODER, flag="--encoder", help="Sentence encoder for "
                          "steered-text similarity to the fine-tuning texts.")
    crosscoder_tokens: int = option(1_000_000, flag="--crosscoder-tokens", cli=False,
                                    help="crosscoder, diff_sae: tokens trained on "
                                    "(epochs over the captured tokens; a config-file "
                                    "setting).")
    seed: int = option(0, flag="--seed", help="Seed of sampling, random vectors and "
                       "bootstraps.")
    n_boot: int = option(1000, flag="--n-boot", help="Bootstrap replicates.")
    batch_size: int = option(32, flag="--batch-size", help="Rows per forward pass (does not "
                             "change the result).")

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise InputError(f"--methods takes a comma-separated list of {', '.join(METHODS)}; "
                             f"got {','.join(self.methods) or 'nothing'}")
        for name in ("positions", "top_k", "n_words", "samples", "max_new_tokens", "n_topics",
                     "max_tokens", "batch_size", "n_boot", "max_finetune",
                     "crosscoder_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got "
                                 f"{getattr(self, name)}")
        if not self.scales or min(self.scales) <= 0 or not self.strengths \
                or min(self.strengths) <= 0:
            raise InputError("--scales and --strengths must be positive numbers")
        if not self.alphas or min(self.alphas) < 0:
            raise InputError(f"--alphas must be numbers >= 0, got {self.alphas}")
        if self.coherence_factor < 1:
            raise InputError(f"--coherence-factor must be >= 1, got {self.coherence_factor}")

    @classmethod
    def quick(cls) -> "DiscoverConfig":
        """``difflens compare``'s lighter setting: 4 samples per opening, 3 alphas."""
        return cls(samples=4, alphas=(0.0, 1.0, 4.0), strengths=(1.0, 2.0, 4.0, 8.0))


__all__ = ["METHODS", "DiscoverConfig", "builtin_openings", "builtin_texts", "read_texts"]
