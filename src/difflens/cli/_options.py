"""Commands built from configs: each instrument command's options are its config's fields
(``difflens._config``), plus the option groups every model command shares: the models
(``--model``, or the ``--base/--tuned`` shorthand), the loading options and the engine.

One flag has one meaning in every command: ``--model`` is a model of the run, as
``[NAME=]MODEL``, repeated for a set (lineage order, base first; a set names each model).
"""

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, TypeVar

import typer

from difflens._config import Option, config_from, options_of
from difflens.cli._common import (
    Device,
    DeviceMap,
    Dtype,
    EngineName,
    LayersPath,
    MergeAdapters,
    Quantize,
    RayAddress,
    Revision,
    Tuned,  # the one --tuned
    WorkerGpus,
    Workers,
    engine_of,
    friendly_errors,
    load,
    load_set,
    load_target,
    set_specs,
)
from difflens.errors import InputError

C = TypeVar("C")
REQUIRED = inspect.Parameter.empty

_MODEL = "hub id, folder, .gguf or preset (see `difflens list presets`)"
Models = Annotated[list[str] | None, typer.Option(
    "--model", help=f"A model of the run, [NAME=]MODEL ({_MODEL}); repeat it for a set, in "
    "lineage order, base first, each named: --model base=B --model sft=S.")]
OneModel = Annotated[str, typer.Option(
    "--model", help=f"The model, [NAME=]MODEL ({_MODEL}).")]
Base = Annotated[str | None, typer.Option(
    "--base", help="Two-model shorthand: the base (or the only model).")]

#: the loading options every model command takes: name -> (annotated type, default).
LOADING: dict[str, tuple[Any, Any]] = {
    "device": (Device, None), "dtype": (Dtype, None), "device_map": (DeviceMap, None),
    "quantize": (Quantize, None), "revision": (Revision, None),
    "layers_path": (LayersPath, None), "merge_adapters": (MergeAdapters, False),
}
#: where the model work runs (commands that sample or capture much).
ENGINE: dict[str, tuple[Any, Any]] = {
    "engine": (EngineName, "local"), "address": (RayAddress, None), "workers": (Workers, 2),
    "worker_gpus": (WorkerGpus, 0.0),
}
MODELS: dict[str, tuple[Any, Any]] = {"model": (Models, None), "base": (Base, None),
                                      "tuned": (Tuned, None)}


def config_params(cls: type, *, only: Iterable[str] | None = None,
                  skip: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """The CLI options of config ``cls`` (name -> (annotated type, default)), from its
    fields: flag, help and default as declared there. A sequence (or a field with its own
    parser) is taken as text, e.g. ``--alphas -2,0,2``."""
    opts = options_of(cls)
    keep = set(opts) if only is None else set(only)
    out: dict[str, tuple[Any, Any]] = {}
    for key, opt in opts.items():
        if key not in keep or key in set(skip) or not opt.cli:
            continue
        out[key] = _param(opt)
    return out


def _param(opt: Option) -> tuple[Any, Any]:
    flags = opt.flag.split("/")
    info = typer.Option(*flags, help=opt.help)
    if opt.parse is not None or opt.is_sequence:
        return Annotated[str, info], opt.to_text(opt.default)
    return Annotated[_cli_type(opt.type), info], opt.default


def _cli_type(tp: Any) -> Any:
    """The type typer reads: the field's own (``int``, ``float | None``, ...), or ``str``
    where the field also takes what no flag can (e.g. an encoder's name or a callable)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union,
                                                             types.UnionType) else (tp,)
    plain = [a for a in args if a is not type(None)]
    if len(plain) == 1 and plain[0] in (int, float, str, bool):
        return tp
    return str | None if type(None) in args else str


def config_of(cls: type[C], values: Mapping[str, Any], *, base: C | None = None) -> C:
    """The config of a command's option ``values`` (those that are options of ``cls``)."""
    opts = options_of(cls)
    return config_from(cls, {k: v for k, v in values.items() if k in opts},
                       where="the command line", base=base)


def loading(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``difflens.cli._common.load`` from the loading options."""
    return {"revision": values.get("revision"), "dtype": values.get("dtype"),
            "device": values.get("device"), "layers_path": values.get("layers_path"),
            "device_map": values.get("device_map"), "quantization": values.get("quantize"),
            "merge_adapters": bool(values.get("merge_adapters", False))}


def engine(values: Mapping[str, Any]) -> Any:
    """The engine the engine options name (None: this process)."""
    return engine_of(values.get("engine", "local"), values.get("address"),
                     values.get("workers", 2), values.get("worker_gpus", 0.0))


def load_models(values: Mapping[str, Any]) -> Any:
    """One model, a pair or a ``ModelSet`` from ``--model`` (repeated)
    or ``--base/--tuned``, loaded with the loading options (a set's tokenizers and configs
    are compared before any weights load)."""
    specs, base, tuned = values.get("model") or [], values.get("base"), values.get("tuned")
    kw = loading(values)
    if specs and (base or tuned):
        raise InputError("give the models either as --model [NAME=]MODEL (repeated) or as "
                         "--base/--tuned, not both")
    if len(specs) > 1:
        return load_set(set_specs(specs, None, None, revision=kw["revision"]), **kw)
    if specs:
        return load(one_model(specs[0]), **kw)
    if not base:
        raise InputError("give a model: --model MODEL (repeat it for a set: --model base=B "
                         "--model sft=S), or --base B [--tuned T]")
    return load_target(base, tuned, **kw)


def one_model(spec: str) -> str:
    """The model of a lone ``--model [NAME=]MODEL``."""
    name, eq, model = spec.partition("=")
    return model.strip() if eq and name.strip().isidentifier() and model.strip() else spec


def build(fn: Callable[..., None], params: Mapping[str, tuple[Any, Any]], doc: str
          ) -> Callable[..., None]:
    """``fn(**values)`` as a typer command taking ``params`` (keyword options, in order),
    with one-line errors."""
    def cmd(**values: Any) -> None:
        fn(**values)

    cmd.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann,
                          default=default) for name, (ann, default) in params.items()])
    cmd.__doc__ = doc
    return friendly_errors(cmd)
