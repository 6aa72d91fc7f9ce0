"""``difflens compare``: every instrument on a user's model set (a lineage or a pair), with
the built-in inputs, into one report with stage attribution."""

from pathlib import Path
from typing import Any

from rich.console import Console

from difflens.cli._common import (
    BatchSize,
    ConfigFile,
    Device,
    DeviceMap,
    Dtype,
    LayersPath,
    ModelSpecs,
    Only,
    OptionalBase,
    OutDir,
    Quantize,
    Revision,
    Seed,
    Skip,
    Tuned,
    friendly_errors,
)

out = Console()


def choose_sections(only: str | None, skip: str | None, configured: Any = None
                    ) -> tuple[str, ...]:
    """The sections to run: ``--only`` or the config's ``sections`` (default: all), minus
    ``--skip``, in report order."""
    from difflens.errors import InputError
    from difflens.pipelines.compare import SECTIONS

    def parse(text: str, flag: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in names if s not in SECTIONS]
        if bad or not names:
            raise InputError(f"{flag} takes section names separated by commas, from "
                             f"{', '.join(SECTIONS)}; got {text!r}")
        return names

    chosen = (parse(only, "--only") if only else list(configured or SECTIONS))
    dropped = set(parse(skip, "--skip")) if skip else set()
    sections = tuple(s for s in SECTIONS if s in chosen and s not in dropped)
    if not sections:
        raise InputError("--only and --skip leave no section to run")
    return sections


@friendly_errors
def compare_cmd(
    models: ModelSpecs = None,
    base: OptionalBase = None,
    tuned: Tuned = None,
    out_dir: OutDir = Path("difflens-compare"),
    only: Only = None,
    skip: Skip = None,
    config: ConfigFile = None,
    seed: Seed = 0,
    batch_size: BatchSize = 32,
    revision: Revision = None,
    dtype: Dtype = None,
    device: Device = None,
    device_map: DeviceMap = None,
    quantize: Quantize = None,
    layers_path: LayersPath = None,
) -> None:
    """Run every instrument on a model set with built-in inputs and write one report.

    The set is --model NAME=MODEL repeated in lineage order (base first), or --base/--tuned.
    Each stage's change to each headline metric (with 95% CIs) is in OUT/summary.json under
    attribution.<metric>.<stage>, and on OUT/index.html.
    """
    from difflens._io import check_writable
    from difflens.cli._common import load_set, set_specs
    from difflens.pipelines.compare import compare
    from difflens.pipelines.compare_config import CompareConfig, read_compare_config

    options = read_compare_config(config) if config is not None else {}
    sections = choose_sections(only, skip, options.pop("sections", None))
    options.setdefault("seed", seed)
    # the sections with a batch size of their own (control's is its generation config's)
    for section in ("capture", "collapse", "trajectories", "themes"):
        options[section] = {"batch_size": batch_size, **options.get(section, {})}
    cfg = CompareConfig(sections=sections, **options)
    named = set_specs(models, base, tuned, revision=revision)  # before any weights load
    check_writable(out_dir)
    model_set = load_set(named, revision=revision, dtype=dtype, device=device,
                         layers_path=layers_path, device_map=device_map, quantization=quantize)
    run = compare(model_set, out_dir, config=cfg, progress=True)
    out.print(f"[green]report:[/] {out_dir / 'index.html'}   summary: "
              f"{out_dir / 'summary.json'}")
    for block in run.sections:
        if block.takeaways:
            out.print(f"[bold]{block.heading}[/]")
            for line in block.takeaways:
                out.print(f"  {line}", highlight=False)
