"""A base model and its tuned sibling, checked to be comparable token by token."""

import dataclasses
from collections.abc import Mapping

from difflens.errors import InputError
from difflens.models.loading import LoadedModel


def check_same_tokenizer(base: LoadedModel, tuned: LoadedModel) -> None:
    """Raise ValueError unless every token string maps to the same id in both tokenizers."""
    vb, vt = base.tokenizer.get_vocab(), tuned.tokenizer.get_vocab()
    if vb == vt:
        return
    diffs = []
    for token in sorted(set(vb) | set(vt), key=lambda t: (vb.get(t, vt.get(t, 0)), t)):
        if vb.get(token) != vt.get(token):
            diffs.append(f"{token!r}: {vb.get(token)} (base) vs {vt.get(token)} (tuned)")
        if len(diffs) == 3:
            break
    raise InputError(
        f"the tokenizers differ: base has {len(vb)} tokens, tuned has {len(vt)}; first "
        f"differences: {'; '.join(diffs)}. A pair must share a tokenizer so that both models "
        f"read the same token ids."
    )


@dataclasses.dataclass(frozen=True)
class ModelPair:
    """Two models that share a tokenizer, compared layer by layer.

    Args:
        base: the reference model.
        tuned: its fine-tuned sibling.
        layer_map: captured-layer index of ``base`` -> captured-layer index of ``tuned``;
            needed when the layer counts differ, identity otherwise.
    """

    base: LoadedModel
    tuned: LoadedModel
    layer_map: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        check_same_tokenizer(self.base, self.tuned)
        nb, nt = self.base.n_layers, self.tuned.n_layers
        if self.layer_map is None:
            if nb != nt or self.base.d_model != self.tuned.d_model:
                raise InputError(
                    f"the models differ in shape: base has {nb} layers of width "
                    f"{self.base.d_model}, tuned has {nt} of width {self.tuned.d_model}; pass "
                    f"layer_map={{base_layer: tuned_layer, ...}} to compare them"
                )
            return
        for b, t in self.layer_map.items():
            self.base.layers.normalize(b)
            self.tuned.layers.normalize(t)

    @property
    def models(self) -> dict[str, LoadedModel]:
        return {"base": self.base, "tuned": self.tuned}

    def tuned_layer(self, base_layer: int) -> int:
        """The tuned model's layer that corresponds to ``base_layer`` (normalised)."""
        if self.layer_map is None:
            return base_layer
        norm = {self.base.layers.normalize(b): self.tuned.layers.normalize(t)
                for b, t in self.layer_map.items()}
        if base_layer not in norm:
            raise InputError(
                f"base layer {base_layer} has no entry in layer_map (mapped: {sorted(norm)})"
            )
        return norm[base_layer]


def models_of(model_or_pair: object, *, same_shape: bool = False) -> dict[str, LoadedModel]:
    """``label -> model`` of a pair, or ``{"model": lm}`` of one model.

    Args:
        model_or_pair: a :class:`LoadedModel` or a :class:`ModelPair`.
        same_shape: refuse a pair that needs a layer map (models of different depth).
    """
    if isinstance(model_or_pair, ModelPair):
        if same_shape and model_or_pair.layer_map is not None:
            raise InputError("this analysis needs a pair of the same shape (no layer_map)")
        return model_or_pair.models
    if isinstance(model_or_pair, LoadedModel):
        return {"model": model_or_pair}
    raise InputError(
        f"expected a LoadedModel or a ModelPair (see difflens.load_model), got "
        f"{type(model_or_pair).__name__}"
    )
