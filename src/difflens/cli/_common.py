"""What every command shares: one-line errors, the stderr console, the option vocabulary
(one definition per flag, reused by every command that takes it), model loading from those
options, and the deprecated spellings kept for one release."""

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from difflens.errors import DifflensWarning, InputError

if TYPE_CHECKING:
    from difflens.models import LoadedModel, ModelPair, ModelSet
    from difflens.models.engines import RayEngine

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn user errors into one readable line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DifflensWarning)
            try:
                return fn(*args, **kwargs)
            except InputError as exc:
                err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
                err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            finally:
                for w in caught:
                    if issubclass(w.category, DifflensWarning):
                        err.print(f"[yellow]warning:[/] {w.message}", highlight=False)

    return wrapper  # type: ignore[return-value]


# -- the vocabulary: one definition per flag ------------------------------------------------
# A command declares ``name: Alias = default``; the default stays with the command (and,
# where the library has one, is the library's).

_MODEL = "hub id, folder, .gguf or preset (see `difflens list presets`)"
Base = Annotated[str, typer.Option("--base", help=f"Base model (or the only one): {_MODEL}.")]
Tuned = Annotated[str | None, typer.Option("--tuned", help="Tuned sibling, for a pair.")]
#: Commands that compare a whole lineage take ``--model`` repeated, each ``NAME=MODEL``.
ModelSpecs = Annotated[list[str] | None, typer.Option(
    "--model", help=f"A model of the set as NAME=MODEL ({_MODEL}); repeat it in lineage "
    "order, base first: --model base=B --model sft=S --model dpo=D.")]
OptionalBase = Annotated[str | None, typer.Option(
    "--base", help="Two-model shorthand: the base (named base).")]
Only = Annotated[str | None, typer.Option(
    "--only", help="Run only these sections (comma-separated): capture, concepts, "
    "trajectories, collapse, control, themes.")]
Skip = Annotated[str | None, typer.Option(
    "--skip", help="Skip these sections (comma-separated).")]
ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="A TOML file with one table per section (\\[collapse], \\[concepts], "
    "...) setting that section's options, under their command-line names (samples = 8).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Most inputs per forward pass.")]
Device = Annotated[str | None, typer.Option(
    "--device", help="cpu or cuda[:N] (default: cuda if available).")]
Dtype = Annotated[str | None, typer.Option(
    "--dtype", help="The model's weights dtype: float32|float16|bfloat16 (default: float32 on "
    "CPU, bfloat16 on CUDA).")]
DeviceMap = Annotated[str | None, typer.Option(
    "--device-map", help="Split the model across devices with accelerate: auto (or balanced, "
    "balanced_low_0, sequential), or a JSON object or .json file of module path -> device (a "
    "GPU index, cpu, disk). Layers may then run on several devices; hidden states still "
    "come back to the CPU store.")]
Quantize = Annotated[str | None, typer.Option(
    "--quantize", help="Load the weights in 8bit or 4bit with bitsandbytes (needs a CUDA "
    "GPU).")]
Revision = Annotated[str | None, typer.Option(
    "--revision", help="Hub revision (branch, tag or commit) of the model(s).")]
MergeAdapters = Annotated[bool, typer.Option(
    "--merge-adapters", help="Merge a BASE+ADAPTER model's peft adapter into its weights "
    "(default: its LoRA layers run beside them; the same outputs to float rounding).")]
LayersPath = Annotated[str | None, typer.Option(
    "--layers-path", help="Module path of the decoder blocks (default: found).")]
UnusedBatchSize = Annotated[int | None, typer.Option(
    "--batch-size", help="Most inputs per forward pass. Not used by this command yet: its "
    "library step takes no batch size.")]
_MAX_INPUTS = typer.Option(
    "--max-inputs", help="Use only the first N inputs (prompts, items, examples).")
MaxInputs = Annotated[int | None, _MAX_INPUTS]
MaxInputsCount = Annotated[int, _MAX_INPUTS]  # where the command needs a number
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Tokens per generation.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of sampling, splits and bootstraps.")]
OutDir = Annotated[Path, typer.Option("--out", help="Output folder.")]
StoreOut = Annotated[str, typer.Option(
    "--out", help="Output folder, or a filesystem URI such as s3://bucket/run.")]
PromptsFile = Annotated[Path | None, typer.Option(
    "--prompts", help="Prompt file: .txt .jsonl .json .csv.")]


def unused_batch_size(value: int | None, command: str) -> None:
    """Say so when ``--batch-size`` is given to a command whose library step has none."""
    if value is not None:
        err.print(f"[yellow]warning:[/] --batch-size has no effect on `difflens {command}` "
                  f"yet: its library step takes no batch size", highlight=False, soft_wrap=True)


EngineName = Annotated[str, typer.Option(
    "--engine", help="Where the model work runs: local (this process) or ray (actors on a Ray "
    "cluster, each loading the models once; pip install 'difflens[ray]').")]
RayAddress = Annotated[str | None, typer.Option(
    "--address", help="--engine ray: the cluster to join (auto, or ray://head:10001; default: "
    "a local cluster on this machine).")]
Workers = Annotated[int, typer.Option(
    "--workers", help="--engine ray: actors, each holding its own copy of the models.")]
WorkerGpus = Annotated[float, typer.Option(
    "--worker-gpus", help="--engine ray: GPUs per actor (fractions share a GPU; 0 = CPU).")]


def engine_of(engine: str, address: str | None, workers: int, worker_gpus: float
              ) -> "RayEngine | None":
    """The engine ``--engine/--address/--workers/--worker-gpus`` name (``None``: local)."""
    from difflens.models.engines import RayEngine

    if engine == "local":
        if address is not None or worker_gpus or workers != 2:
            raise InputError("--address, --workers and --worker-gpus need --engine ray")
        return None
    if engine != "ray":
        raise InputError(f"--engine takes local or ray, got {engine!r}")
    return RayEngine(address=address, workers=workers, worker_gpus=worker_gpus)


def load(name: str, *, revision: str | None, dtype: str | None, device: str | None,
         layers_path: str | None = None, device_map: str | None = None,
         quantization: str | None = None, merge_adapters: bool = False) -> "LoadedModel":
    """``load_model`` with the loading options every model command takes (``device_map``
    is ``--device-map`` as typed: ``load_model`` reads a strategy, JSON or a file)."""
    from difflens.models import load_model

    return load_model(name, revision=revision, dtype=dtype, device=device,
                      layers_path=layers_path, device_map=device_map,
                      quantization=quantization, merge_adapters=merge_adapters)


def load_target(base: str, tuned: str | None, *, revision: str | None, dtype: str | None,
                device: str | None, layers_path: str | None = None,
                device_map: str | None = None, quantization: str | None = None,
                merge_adapters: bool = False) -> "LoadedModel | ModelPair":
    """One model, or the (base, tuned) pair when ``tuned`` is given (both loaded alike)."""
    from difflens.models import ModelPair

    kw: dict[str, Any] = dict(revision=revision, dtype=dtype, device=device,
                              layers_path=layers_path, device_map=device_map,
                              quantization=quantization, merge_adapters=merge_adapters)
    model = load(base, **kw)
    return model if tuned is None else ModelPair(model, load(tuned, **kw))


def set_specs(specs: list[str] | None, base: str | None, tuned: str | None, *,
              revision: str | None) -> dict[str, str]:
    """Name -> model of ``--model NAME=MODEL`` (repeated, lineage order) or of the
    ``--base/--tuned`` shorthand (named base and tuned), with the set's tokenizers and configs
    compared (``check_model_set``): an incompatible set is refused in
    one line before any weights load."""
    from difflens.models import check_model_set, parse_model_specs

    if specs and (base or tuned):
        raise InputError("give the models either as --model NAME=MODEL (repeated) or as "
                         "--base/--tuned, not both")
    if not specs:
        if not (base and tuned):
            raise InputError("give a model set: --model base=B --model sft=S ... (lineage "
                             "order, base first), or --base B --tuned T")
        named = {"base": base, "tuned": tuned}
    else:
        named = parse_model_specs(specs)
    check_model_set(named, revision=revision)
    return named


def load_set(named: dict[str, str], *, revision: str | None, dtype: str | None,
             device: str | None, layers_path: str | None = None,
             device_map: str | None = None, quantization: str | None = None,
             merge_adapters: bool = False) -> "ModelSet":
    """The ``ModelSet`` of ``set_specs``'s models, loaded alike."""
    from difflens.models import ModelSet

    kw: dict[str, Any] = dict(revision=revision, dtype=dtype, device=device,
                              layers_path=layers_path, device_map=device_map,
                              quantization=quantization, merge_adapters=merge_adapters)
    return ModelSet({name: load(model, **kw) for name, model in named.items()})


# -- deprecated spellings, kept for one release ---------------------------------------------


def warn_deprecated(old: str, new: str) -> None:
    """The one-line notice an old spelling prints on stderr."""
    err.print(f"[yellow]warning:[/] {old} is deprecated; use {new}", highlight=False,
              soft_wrap=True, markup=True)


def rename_flags(args: list[str], renamed: dict[str, str], where: str = "") -> list[str]:
    """``args`` with old flag names (``--old`` or ``--old=value``) replaced by the new ones,
    each announced once; nothing after ``--`` is touched."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if name in renamed:
            warn_deprecated(name + where, renamed[name])
            arg = renamed[name] + eq + value
        out.append(arg)
    return out


class VocabCommand(TyperCommand):
    """A command that still accepts its old flag names (``renamed``: old -> new) and, for a
    hidden copy at an old path, says where the command went (``moved``: old, new path)."""

    renamed: ClassVar[dict[str, str]] = {}
    moved: ClassVar[tuple[str, str] | None] = None

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a (vendored) click Context
        if not ctx.resilient_parsing:
            if self.moved is not None:
                warn_deprecated(f"`difflens {self.moved[0]}`", f"`difflens {self.moved[1]}`")
            args = rename_flags(args, self.renamed)
        return super().parse_args(ctx, args)


def vocab(renamed: dict[str, str] | None = None,
          moved: tuple[str, str] | None = None) -> type[VocabCommand]:
    """A ``VocabCommand`` class for ``app.command(..., cls=vocab(...))``."""
    attrs: dict[str, Any] = {"renamed": dict(renamed or {}), "moved": moved}
    return type("VocabCommand", (VocabCommand,), attrs)


class DefaultVerbGroup(TyperGroup):
    """A group whose old form was a single command: ``difflens NOUN --opt ...`` (options
    right after the noun) runs ``difflens NOUN VERB --opt ...`` with a deprecation notice.
    ``legacy_renamed`` maps flags whose meaning changed in the move (old -> new)."""

    default_verb: ClassVar[str] = ""
    legacy_renamed: ClassVar[dict[str, str]] = {}

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a (vendored) click Context
        if (args and args[0].startswith("-") and args[0] not in ctx.help_option_names
                and not ctx.resilient_parsing):
            noun = ctx.info_name or self.name or ""
            warn_deprecated(f"`difflens {noun} OPTIONS`",
                            f"`difflens {noun} {self.default_verb} OPTIONS`")
            args = [self.default_verb, *rename_flags(args, self.legacy_renamed,
                                                     f" of the old `difflens {noun}`")]
        return super().parse_args(ctx, args)


def default_verb_group(verb: str, legacy_renamed: dict[str, str] | None = None
                       ) -> type[DefaultVerbGroup]:
    """A ``DefaultVerbGroup`` class for ``typer.Typer(cls=...)``."""
    attrs: dict[str, Any] = {"default_verb": verb, "legacy_renamed": dict(legacy_renamed or {})}
    return type("DefaultVerbGroup", (DefaultVerbGroup,), attrs)
