"""A lineage of models (base -> SFT -> preference-tuned): an ordered, named set of models
that share a tokenizer, of which a ``ModelPair`` is the
two-model case.

``parse_model_specs`` reads ``NAME=MODEL`` strings (the CLI's ``--model``),
``check_model_set`` refuses an incompatible set from tokenizers and configs alone
(before any weights load), and ``ModelSet`` holds the loaded models in lineage order,
hands out the pairs an instrument compares (``ModelSet.adjacent``,
``ModelSet.against_base``) and describes itself for a stored run.

The compatibility rules are the pair's: one tokenizer (every token string has the same id)
and the same depth and width, unless a layer map says which layer of a model matches which
layer of the first. The pair's ``tokenizer_mismatch`` and
``shape_mismatch`` state them on plain vocabularies and shapes,
with the models' names, so they run on tokenizers and configs as well as on loaded models.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair, shape_mismatch, tokenizer_mismatch
from difflens.models.presets import preset_path, quiet_transformers

#: A model's name in a set: it becomes a key of stored summaries (``attribution.<metric>.
#: <stage>``), so no dots, spaces or slashes.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"model name {name!r} is not usable in a model set: use letters, "
            f"digits, '-' and '_' only (e.g. base, sft, dpo)"
        )
    return name


def _refuse_tokenizers(a: str, b: str, detail: str) -> InputError:
    return InputError(
        f"models {a!r} and {b!r} cannot be in one model set: their tokenizers "
        f"differ: {detail}. Every model of a set must share one tokenizer so "
        f"that all read the same token ids"
    )


def _refuse_shapes(a: str, b: str, detail: str) -> InputError:
    return InputError(
        f"models {a!r} and {b!r} cannot be in one model set as given: they "
        f"differ in shape: {detail}; pass layer_maps={{{b!r}: {{{a}_layer: "
        f"{b}_layer, ...}}}} to compare them"
    )


def parse_model_specs(specs: Sequence[str]) -> dict[str, str]:
    """``["base=B", "sft=S", ...]`` -> ``{"base": "B", "sft": "S", ...}``, in lineage order.

    The split is at the first ``=``, so a model path may hold one.

    Raises:
        InputError: a spec without ``=``, an empty or unusable name, an empty model, a name
            given twice, or fewer than two models.
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, eq, model = spec.partition("=")
        name, model = name.strip(), model.strip()
        if not eq:
            raise InputError(
                f"a model of a set is given as NAME=MODEL (e.g. sft=org/model-sft), got "
                f"{spec!r}: name each model of the lineage"
            )
        if not name:
            raise InputError(
                f"model spec {spec!r} has an empty name: write NAME=MODEL, e.g. "
                f"base={model or 'org/model'}"
            )
        _check_name(name)
        if not model:
            raise InputError(
                f"model spec {spec!r} names no model: write NAME=MODEL, e.g. {name}=org/model"
            )
        if name in out:
            raise InputError(
                f"model name {name!r} is given twice ({out[name]} and {model}): "
                f"give each model of the set its own name"
            )
        out[name] = model
    if len(out) < 2:
        raise InputError(
            f"a model set needs at least 2 models (NAME=MODEL each, in "
            f"lineage order, base first), got {len(out)}"
        )
    return out


def _config_shape(config: Any) -> tuple[int, int]:
    """``(decoder blocks, residual width)`` as a transformers config states them."""
    layers = next(
        (
            getattr(config, k)
            for k in ("num_hidden_layers", "n_layer", "num_layers")
            if isinstance(getattr(config, k, None), int)
        ),
        None,
    )
    width = next(
        (
            getattr(config, k)
            for k in ("hidden_size", "n_embd", "d_model")
            if isinstance(getattr(config, k, None), int)
        ),
        None,
    )
    if layers is None or width is None:
        raise InputError(
            f"cannot read the depth and width from a {type(config).__name__}: "
            f"load the models and build a ModelSet instead"
        )
    return int(layers), int(width)


def _read_tokenizer_and_config(name: str, model: str, revision: str | None) -> tuple[Any, Any]:
    """The tokenizer and config of ``model`` (a preset, folder, .gguf file or hub id); no
    weights are read."""
    from transformers import AutoConfig, AutoTokenizer

    from difflens.models.adapters import check_adapter, split_spec

    model, adapter = split_spec(model)  # an adapter keeps its base's tokenizer and config
    if adapter:
        check_adapter(adapter)
    source: str | Path = preset_path(model) or Path(model).expanduser()
    if not isinstance(source, Path) or not source.exists():
        source = model  # a hub id
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    where = str(source)
    if isinstance(source, Path) and source.is_file():
        kwargs["gguf_file"], where = source.name, str(source.parent)
    try:
        with quiet_transformers():
            return (
                AutoTokenizer.from_pretrained(where, **kwargs),
                AutoConfig.from_pretrained(where, **kwargs),
            )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"could not read the tokenizer and config of {name}={model}: {first}"
        ) from None


def check_model_set(
    specs: Mapping[str, str],
    *,
    revision: str | None = None,
    layer_maps: Mapping[str, Mapping[int, int]] | None = None,
) -> None:
    """Refuse a set whose models cannot be compared, from tokenizers and configs only.

    Cheap enough to run before loading any weights (the CLI's first step): each model's
    tokenizer and config are read (``AutoTokenizer``/``AutoConfig``) and compared with
    the first model's.

    Args:
        specs: name -> model (hub id, folder, .gguf or preset), in lineage order, as
            ``parse_model_specs`` returns.
        revision: hub revision of the models.
        layer_maps: names of models whose depth may differ from the first's (their maps
            are checked against the loaded layers by ``ModelSet``).

    Raises:
        InputError: one line naming the two models and what differs.
    """
    names = [_check_name(n) for n in specs]
    if len(names) < 2:
        raise InputError(f"a model set needs at least 2 models, got {len(names)}")
    first = names[0]
    tok0, cfg0 = _read_tokenizer_and_config(first, specs[first], revision)
    for name in names[1:]:
        tok, cfg = _read_tokenizer_and_config(name, specs[name], revision)
        detail = tokenizer_mismatch(tok0.get_vocab(), tok.get_vocab(), (first, name))
        if detail is not None:
            raise _refuse_tokenizers(first, name, detail)
        if name not in (layer_maps or {}):
            shape = shape_mismatch(_config_shape(cfg0), _config_shape(cfg), (first, name))
            if shape is not None:
                raise _refuse_shapes(first, name, shape)


@dataclasses.dataclass(frozen=True)
class ModelSet:
    """Models of one lineage, in order (the first is the base), sharing a tokenizer.

    Args:
        models: name -> loaded model, in lineage order (e.g. base, sft, dpo).
        layer_maps: name -> ``{first model's layer: this model's layer}`` for the models
            whose depth differs from the first's; the others match the first layer by layer.
    """

    models: Mapping[str, LoadedModel]
    layer_maps: Mapping[str, Mapping[int, int]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        models = {_check_name(n): lm for n, lm in self.models.items()}
        if len(models) < 2:
            raise InputError(f"a model set needs at least 2 models, got {len(models)}")
        names = list(models)
        first = names[0]
        extra = [n for n in self.layer_maps if n not in names[1:]]
        if extra:
            raise InputError(
                f"layer_maps names {extra}, which are not models after the first "
                f"({first!r}) of this set: {names}"
            )
        base = models[first]
        maps = {
            n: {base.layers.normalize(b): models[n].layers.normalize(t) for b, t in m.items()}
            for n, m in self.layer_maps.items()
        }
        for name in names[1:]:
            lm = models[name]
            detail = tokenizer_mismatch(
                base.tokenizer.get_vocab(), lm.tokenizer.get_vocab(), (first, name)
            )
            if detail is not None:
                raise _refuse_tokenizers(first, name, detail)
            if name not in maps:
                shape = shape_mismatch(
                    (base.n_layers, base.d_model), (lm.n_layers, lm.d_model), (first, name)
                )
                if shape is not None:
                    raise _refuse_shapes(first, name, shape)
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "layer_maps", maps)
        for name in names[1:]:
            self.pair(first, name)  # the pair's own checks, on every model against the base

    @classmethod
    def from_pair(cls, pair: ModelPair, names: tuple[str, str] = ("base", "tuned")) -> "ModelSet":
        """The two-model set of a pair (``pair.base`` first)."""
        a, b = names
        maps = {} if pair.layer_map is None else {b: dict(pair.layer_map)}
        return cls({a: pair.base, b: pair.tuned}, layer_maps=maps)

    @property
    def names(self) -> tuple[str, ...]:
        """The models' names in lineage order."""
        return tuple(self.models)

    @property
    def base(self) -> LoadedModel:
        """The first model of the lineage."""
        return self.models[self.names[0]]

    def __len__(self) -> int:
        return len(self.models)

    def _named(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise InputError(
                f"no model named {name!r} in this set: it holds {', '.join(self.names)}"
            )
        return self.models[name]

    def pair(self, a: str, b: str) -> ModelPair:
        """The pair (``a`` as base, ``b`` as tuned), with the layer map between them."""
        base, tuned = self._named(a), self._named(b)
        ma, mb = self.layer_maps.get(a), self.layer_maps.get(b)
        layer_map: dict[int, int] | None
        if ma is None and mb is None:
            layer_map = None
        elif ma is None:  # a matches the first model layer by layer
            layer_map = dict(mb or {})
        elif mb is None:
            layer_map = {t: f for f, t in ma.items()}
        else:
            layer_map = {ma[f]: mb[f] for f in ma if f in mb}
        return ModelPair(base, tuned, layer_map)

    def adjacent(self) -> dict[tuple[str, str], ModelPair]:
        """Each stage of the lineage, ``(from, to) -> pair``: (base, sft), (sft, dpo), ..."""
        n = self.names
        return {(a, b): self.pair(a, b) for a, b in zip(n[:-1], n[1:], strict=True)}

    def against_base(self) -> dict[tuple[str, str], ModelPair]:
        """Every later model against the first: (base, sft), (base, dpo), ..."""
        first = self.names[0]
        return {(first, b): self.pair(first, b) for b in self.names[1:]}

    def describe(self) -> list[dict[str, Any]]:
        """What a stored run records: each model's name, place in the lineage (0 = base),
        identity and layer map (``None``: layer by layer with the base)."""
        out = []
        for position, (name, lm) in enumerate(self.models.items()):
            m = self.layer_maps.get(name)
            out.append(
                {
                    "name": name,
                    "position": position,
                    "identity": lm.identity.to_dict(),
                    "layer_map": None if m is None else {str(k): v for k, v in m.items()},
                }
            )
        return out
