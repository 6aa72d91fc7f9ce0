"""Finding the decoder blocks of a Hugging Face causal LM by module-name suffix.

No ``isinstance`` ladder: a model's blocks are the first ``ModuleList`` whose dotted name
ends with one of ``LAYER_SUFFIXES`` (Llama/Mistral/Qwen ``model.layers``, GPT-2
``transformer.h``, GPT-NeoX ``gpt_neox.layers``, ...). Users can name the path instead.
"""

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from difflens.errors import InputError

if TYPE_CHECKING:
    from difflens.models.loading import LoadedModel

#: Dotted-name suffixes of decoder-block lists, most specific first.
LAYER_SUFFIXES: tuple[str, ...] = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "transformer.blocks",
    "transformer.layers",
    "model.transformer.h",
    "decoder.layers",
    "layers",
    "h",
    "blocks",
)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Where a model's decoder blocks are.

    Captured layer ``0`` is the input to block 0 (the embedding output), layer ``i`` for
    ``1 <= i < n_layers`` is the output of block ``i - 1``, and layer ``n_layers`` is the
    input to the LM head (the last block's output after the final norm). This is exactly
    what ``output_hidden_states=True`` returns.
    """

    path: str
    """Dotted module path of the ``ModuleList`` of blocks."""
    n_layers: int
    """Number of blocks; captured layers run ``0..n_layers``."""

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        blocks = model.get_submodule(self.path)
        assert isinstance(blocks, torch.nn.ModuleList)
        return list(blocks)

    def normalize(self, layer: int) -> int:
        """Map a possibly negative layer index into ``0..n_layers``, or raise ValueError."""
        n = self.n_layers
        idx = layer + n + 1 if layer < 0 else layer
        if not 0 <= idx <= n:
            raise InputError(
                f"layer {layer} is out of range: this model has layers 0..{n} "
                f"(0 = embeddings, {n} = last block after the final norm; negatives count "
                f"from the end)"
            )
        return idx


def find_layers(model: Any, path: str | None = None) -> LayerSpec:
    """Find the decoder blocks of ``model``.

    Args:
        model: a ``transformers`` model.
        path: dotted module path to use instead of discovery.

    Raises:
        ValueError: nothing matched; the message lists the ModuleLists the model has.
    """
    lists = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0
    }
    if path is not None:
        if path not in lists:
            raise InputError(
                f"layers path {path!r} is not a ModuleList of this model; candidates: "
                f"{', '.join(sorted(lists)) or '(none)'}"
            )
        return LayerSpec(path=path, n_layers=len(lists[path]))
    for suffix in LAYER_SUFFIXES:
        for name, mod in lists.items():
            if name == suffix or name.endswith("." + suffix):
                return LayerSpec(path=name, n_layers=len(mod))
    seen = ", ".join(name for name, _ in list(model.named_modules())[1:30])
    raise InputError(
        f"could not find the decoder blocks of {type(model).__name__}: no ModuleList ends with "
        f"any of {', '.join(LAYER_SUFFIXES)}; modules seen: {seen}; pass layers_path='...' "
        f"(CLI: --layers-path) to name them"
    )


LayerSelection = str | int | Sequence[int]
"""``"all"``, a comma list like ``"0,3,-1"``, one index or a list of indices."""


def parse_layer_list(layers: LayerSelection) -> str | tuple[int, ...]:
    """Read a layer selection without a model: ``"all"`` or a tuple of (maybe negative)
    indices. The CLI calls this at the edge; ``parse_layers`` normalises against a model.
    """
    if isinstance(layers, str):
        if layers.strip() == "all":
            return "all"
        try:
            items = tuple(int(x) for x in layers.split(",") if x.strip())
        except ValueError:
            raise InputError(
                f"layers must be 'all' or integers like '0,3,5', got {layers!r}") from None
    elif isinstance(layers, int):
        items = (layers,)
    else:
        items = tuple(int(x) for x in layers)
    if not items:
        raise InputError("no layers given")
    return items


def parse_layers(layers: LayerSelection, lm: "LoadedModel") -> tuple[int, ...]:
    """A layer selection -> sorted layer indices of ``lm`` (negatives counted from the end)."""
    items = parse_layer_list(layers)
    if isinstance(items, str):  # "all"
        return tuple(range(lm.n_layers + 1))
    return tuple(sorted({lm.layers.normalize(x) for x in items}))
