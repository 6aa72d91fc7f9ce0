"""A base model and its tuned sibling, checked to be comparable token by token."""

import dataclasses
from collections.abc import Mapping

from difflens.errors import InputError
from difflens.models.loading import LoadedModel


def tokenizer_mismatch(
    vocab_a: Mapping[str, int],
    vocab_b: Mapping[str, int],
    labels: tuple[str, str],
    *,
    shown: int = 3,
) -> str | None:
    """How two vocabularies differ, or ``None`` when every token string has the same id.

    Args:
        vocab_a: token string -> id of the first tokenizer (``tokenizer.get_vocab()``).
        vocab_b: the same of the second.
        labels: the two models' names, as the text names them.
        shown: how many differing tokens to list (the first ones, by id).

    Returns:
        ``"A has N tokens, B has M; first differences: 'tok': 5 (A) vs None (B); ..."``.
    """
    if vocab_a == vocab_b:
        return None
    a, b = labels
    diffs = []
    for token in sorted(
        set(vocab_a) | set(vocab_b), key=lambda t: (vocab_a.get(t, vocab_b.get(t, 0)), t)
    ):
        if vocab_a.get(token) != vocab_b.get(token):
            diffs.append(f"{token!r}: {vocab_a.get(token)} ({a}) vs {vocab_b.get(token)} ({b})")
        if len(diffs) == shown:
            break
    return (
        f"{a} has {len(vocab_a)} tokens, {b} has {len(vocab_b)}; first differences: "
        f"{'; '.join(diffs)}"
    )


def shape_mismatch(
    shape_a: tuple[int, int], shape_b: tuple[int, int], labels: tuple[str, str]
) -> str | None:
    """How two models' ``(layers, width)`` differ, or ``None`` when they are the same."""
    if shape_a == shape_b:
        return None
    (na, da), (nb, db) = shape_a, shape_b
    a, b = labels
    return f"{a} has {na} layers of width {da}, {b} has {nb} of width {db}"


def check_same_tokenizer(base: LoadedModel, tuned: LoadedModel) -> None:
    """Raise InputError unless every token string maps to the same id in both tokenizers."""
    detail = tokenizer_mismatch(base.tokenizer.get_vocab(), tuned.tokenizer.get_vocab(),
                                ("base", "tuned"))
    if detail is not None:
        raise InputError(f"the tokenizers differ: {detail}. A pair must share a tokenizer so "
                         f"that both models read the same token ids.")


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
            detail = shape_mismatch((nb, self.base.d_model), (nt, self.tuned.d_model),
                                    ("base", "tuned"))
            if detail is not None:
                raise InputError(f"the models differ in shape: {detail}; pass "
                                 f"layer_map={{base_layer: tuned_layer, ...}} to compare them")
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
    """``label -> model`` of a pair, of a model set (its names, in lineage order), or
    ``{"model": lm}`` of one model.

    Args:
        model_or_pair: a ``LoadedModel``, a ``ModelPair`` or a
            ``ModelSet``.
        same_shape: refuse a pair or set that needs a layer map (models of different depth).
    """
    from difflens.models.model_set import ModelSet  # model_set imports this module

    if isinstance(model_or_pair, ModelSet):
        if same_shape and model_or_pair.layer_maps:
            raise InputError("this analysis needs models of the same shape (no layer_maps)")
        return dict(model_or_pair.models)
    if isinstance(model_or_pair, ModelPair):
        if same_shape and model_or_pair.layer_map is not None:
            raise InputError("this analysis needs a pair of the same shape (no layer_map)")
        return model_or_pair.models
    if isinstance(model_or_pair, LoadedModel):
        return {"model": model_or_pair}
    raise InputError(
        f"expected a LoadedModel, a ModelPair or a ModelSet (see difflens.load_model), got "
        f"{type(model_or_pair).__name__}"
    )
