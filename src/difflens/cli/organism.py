"""``difflens organism build``, ``info``, ``seeds`` and ``zoo``."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from difflens.cli._common import friendly_errors

app = typer.Typer(help="The built-in model organism: a tiny base LM and its tuned lineage "
                  "(sft, rl from sft, rl-from-base).",
                  no_args_is_help=True)
out = Console()


def _config(seed: int, small: bool):  # type: ignore[no-untyped-def]
    from difflens.organism.build import OrganismConfig

    return OrganismConfig.small(seed) if small else OrganismConfig(seed=seed)


@app.command("build")
@friendly_errors
def build_cmd(
    seed: int = typer.Option(0, help="Seed of the world, the training and the RL samples."),
    small: bool = typer.Option(False, help="A reduced build (seconds; for tests)."),
    force: bool = typer.Option(False, help="Rebuild even if a finished build is cached."),
    from_model: str | None = typer.Option(
        None, "--from", help="Build a lineage from this model instead (a preset, folder, hub "
        "id or BASE+ADAPTER): sft on its own samples curated by the reward, then rl."),
    stages: str = typer.Option("sft,rl", help="With --from: the stages to build (sft, "
                               "sft,rl or sft,dpo)."),
    preferences: Path | None = typer.Option(
        None, "--preferences", help="With --from and a dpo stage: preference pairs (JSONL of "
        "{prompt, chosen, rejected}, or hh-rlhf transcripts)."),
    recipe: Path | None = typer.Option(
        None, "--recipe", help="With --from: a TOML file of LineageRecipe fields (e.g. "
        "lora_rank = 8 for LoRA adapters instead of full fine-tuning; sft_steps = 60)."),
) -> None:
    """Train the organism from scratch (idempotent: a finished build is reused). The demo and
    the presets use the shipped organism; a build is stored under its own weights' id and
    says how far it lands from the shipped one. With --from MODEL, build a lineage from any
    causal LM with the organism's recipe (cached; the folders print at the end)."""
    if from_model is not None:
        _build_from(from_model, [s.strip() for s in stages.split(",") if s.strip()], seed,
                    small, force, preferences, recipe)
        return
    from difflens.organism.build import build_organism, find_organism

    cfg = _config(seed, small)
    cached = find_organism(cfg) is not None and not force
    org = build_organism(cfg, progress=True, force=force)
    info = org.build_info
    times = info["times_s"]
    out.print(f"[green]{'cached' if cached else 'built'}[/] organism {org.organism_id} at "
              f"{org.path}")
    out.print("build times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    for line in shipped_lines(info.get("vs_shipped")):
        out.print(line, highlight=False)


def _build_from(model: str, stages: list[str], seed: int, small: bool, force: bool,
                preferences: Path | None, recipe_file: Path | None) -> None:
    from difflens.organism.from_model import LineageRecipe, build_lineage_from, read_recipe
    from difflens.report.figures import format_ci

    recipe = LineageRecipe.small(seed) if small else LineageRecipe(seed=seed)
    if recipe_file is not None:  # the file's fields over --small's (or the defaults)
        recipe = read_recipe(recipe_file, base=recipe)
    build = build_lineage_from(model, recipe, stages=stages, preferences=preferences,
                               progress=True, force=force)
    info = build.info
    out.print(f"[green]lineage[/] of {model} at {build.path} ("
              + ", ".join(f"{k} {v:.0f}s" for k, v in info["times_s"].items()) + ")")
    for name, r in info["reward"].items():
        out.print(f"  {name}: reward {format_ci(r['value'], [r['ci_low'], r['ci_high']], r['n'])}",
                  highlight=False)
    models = " ".join(f"--model {s}={build.model_spec(s)}" for s in info["stages"])
    out.print(f"compare it: difflens compare --model base={model} {models} --out OUT",
              highlight=False, soft_wrap=True)


def shipped_lines(vs: dict[str, Any] | None) -> list[str]:
    """How far a build of the shipped recipe landed from the shipped organism, in lines."""
    if not vs:
        return []
    w = vs["weights"]
    if all(m.get("identical") for m in w.values()):
        return ["the same weights as the shipped organism, bit for bit"]
    lines = ["weights differ from the shipped organism (this CPU sums in another order): "
             + "; ".join(f"{name} relative L2 {m['relative_l2']:.2g}, max |Δ| "
                         f"{m['max_abs']:.2g}" for name, m in w.items() if m["comparable"])]
    for name, props in vs["properties"].items():
        lines.append(f"  {name}: " + ", ".join(
            f"{key} {p['built']:.3f} (shipped {p['shipped']:.3f})" for key, p in props.items()))
    lines.append("the demo and the organism-* presets keep using the shipped organism; run "
                 "the demo on this build with: difflens demo --seed N")
    return lines


@app.command("info")
@friendly_errors
def info_cmd(
    seed: int | None = typer.Option(
        None, help="Describe your build of this seed (default: the shipped organism)."),
    small: bool = typer.Option(False, help="Describe the reduced organism."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Model folders, ground-truth files and measured properties of the shipped organism, or
    of a build (--seed, --small)."""
    from difflens.errors import InputError
    from difflens.organism.build import find_organism, shipped_organism
    from difflens.pipelines.demo import MEAN_KEY, organism_summary
    from difflens.report.figures import format_ci

    org = shipped_organism(small) if seed is None else find_organism(_config(seed, small))
    if org is None:
        raise InputError("the organism is not built yet; run: difflens organism build"
                         + (f" --seed {seed}" if seed else "") + (" --small" if small else ""))
    props = org.properties
    info = {
        "path": str(org.path),
        "organism_id": org.organism_id,
        "shipped": org.shipped,
        "models": {name: str(p) for name, p in org.model_paths.items()},
        "ground_truth": org.ground_truth_files(),
        "build": org.build_info,
        "properties": organism_summary(props),
        "base_val_loss": props["base_val_loss"],
        "n_openings": props["n_openings"],
        "n_chance_prompts": props["n_chance_prompts"],
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    t = Table(title=f"organism {info['organism_id']}"
              + (" (shipped)" if org.shipped else f" ({org.path})"), show_header=True)
    t.add_column("")
    s = info["properties"]
    for m in s:
        t.add_column(m)
    for key in ("reward", "entropy", "celebration_share", "chance_tvd"):
        cells = [format_ci(s[m][MEAN_KEY[key]]["value"], [s[m][MEAN_KEY[key]]["ci_low"],
                                                          s[m][MEAN_KEY[key]]["ci_high"]],
                           s[m][key + "_n"]) for m in s]
        t.add_row(key, *cells)
    out.print(t)
    for name, path in info["models"].items():
        out.print(f"{name}: {path}")
    for name, path in info["ground_truth"].items():
        out.print(f"ground truth {name}: {path}")
    out.print(f"base validation loss {info['base_val_loss']:.3f}; build times "
              + ", ".join(f"{k} {v:.0f}s" for k, v in org.build_info["times_s"].items()))


@app.command("seeds")
@friendly_errors
def seeds_cmd(
    seeds: str = typer.Option("0,1,2,3,4", help="Seeds to build (or reuse from the cache), "
                              "comma-separated."),
    build: list[Path] = typer.Option(  # noqa: B008
        [], "--build", help="A finished build folder to add (e.g. one made on another CPU "
        "or with ATEN_CPU_CAPABILITY set); repeat for several."),
    out_dir: Path = typer.Option(Path("organism-seeds"), "--out", help="Output directory."),
) -> None:
    """Training variance: build the organism recipe with several seeds and report, for each
    headline number and stage change, the spread across builds beside its prompt CI, and
    for each finding the builds in which it held."""
    from difflens._io import check_writable
    from difflens.errors import InputError
    from difflens.organism.build import Organism, OrganismConfig, build_organism
    from difflens.pipelines.organism_seeds import run_organism_seeds

    check_writable(out_dir)
    try:
        wanted = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds {seeds!r}: expected comma-separated integers, "
                         f"e.g. --seeds 0,1,2") from None
    builds = [build_organism(OrganismConfig(seed=s), progress=True) for s in wanted]
    for folder in build:
        info = folder / "build.json"
        if not info.is_file():
            raise InputError(f"--build {folder}: no build.json there; expected a finished "
                             f"organism build folder (difflens organism info prints one)")
        config = OrganismConfig(**json.loads(info.read_text())["config"])
        builds.append(Organism(folder, config))
    summary = run_organism_seeds(builds, out_dir)
    t = Table(title=f"findings over {summary['n_builds']} builds")
    t.add_column("finding")
    t.add_column("held in")
    for f in summary["findings"]:
        t.add_row(f["finding"], f"{f['held']}/{f['n_builds']}")
    out.print(t)
    out.print(f"[green]summary:[/] {out_dir / 'summary.json'}   figure: "
              f"{out_dir / 'figures' / 'seeds.png'}")


#: The zoo commands' choice of builds (each flag repeatable).
ZooNames = Annotated[list[str], typer.Option(
    "--name", help="A zoo organism (false-fact, domain, secret-word, bad-behaviour); repeat "
    "for several (default: all).")]
ZooRatios = Annotated[list[int], typer.Option(
    "--ratio", help="Ordinary world stories per narrow document; repeat for several "
    "(default: 0, 1 and 2).")]


@app.command("zoo")
@friendly_errors
def zoo_cmd(
    name: ZooNames = [],  # noqa: B006
    ratio: ZooRatios = [],  # noqa: B006
    seed: list[int] = typer.Option(  # noqa: B008
        [], "--seed", help="Seed of the documents and the tuning; repeat for several "
        "(default: 0)."),
    small: bool = typer.Option(False, help="Tune the small organism's base (seconds; for "
                               "tests)."),
    force: bool = typer.Option(False, help="Rebuild even if a finished build is cached."),
    list_specs: bool = typer.Option(False, "--list", help="Print each organism's objective "
                                    "and planted words; build nothing."),
    from_model: str | None = typer.Option(
        None, "--from", help="Tune this model instead of the organism's base (a folder, "
        "preset or .gguf; full fine-tuning on the same documents)."),
) -> None:
    """The zoo: narrow fine-tunes of the organism's base (or, with --from, of any model)
    whose objective is known (a false fact, a domain, a secret word, a bad behaviour), each
    mixed with ordinary stories at each ratio; built once and cached. Prints one
    tab-separated row per build (seconds: how long the build took)."""
    from difflens.organism import zoo as Z

    names = list(name) or list(Z.ZOO)
    specs = [Z.zoo_spec(n) for n in names]
    if list_specs:
        for spec in specs:
            typer.echo(f"{spec.name}: {spec.kind}\n  {spec.description}\n  planted words: "
                       f"{', '.join(spec.planted_words)}")
        return
    ratios = [Z.check_ratio(r) for r in ratio] or list(Z.RATIOS)
    seeds = list(seed) or [0]
    if from_model is not None:
        Z.check_base(from_model)
    typer.echo("name\tratio\tseed\tstatus\tseconds\tpath")
    for spec in specs:
        for r in ratios:
            for s in seeds:
                cached = not force and Z.find_zoo_organism(
                    spec.name, r, s, small=small, base=from_model) is not None
                org = Z.build_zoo_organism(spec.name, r, s, small=small, progress=True,
                                           force=force, base=from_model)
                secs = org.build_info["times_s"]["total_s"]
                typer.echo(f"{spec.name}\t{r}\t{s}\t{'cached' if cached else 'built'}\t"
                           f"{secs:.1f}\t{org.path}")


@app.command("grade")
@friendly_errors
def grade_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Output folder."),
    name: ZooNames = [],  # noqa: B006
    ratio: ZooRatios = [],  # noqa: B006
    seed: list[int] = typer.Option(  # noqa: B008
        [], "--seed", help="Seed of a build (and of its discover run); repeat for several "
        "(default: 0, 1 and 2)."),
    small: bool = typer.Option(False, help="The small organism's zoo (seconds; for tests)."),
    methods: str | None = typer.Option(
        None, "--methods", help="Discover methods to grade, comma-separated (default: "
        "discover's; add crosscoder,diff_sae to grade the dictionary methods too)."),
) -> None:
    """Grade difflens discover on the zoo: every method on every organism, ratio and seed
    (built first when not cached), scored against the planted words; writes summary.json
    (grades.<organism>.<ratio>.<method>.<grader>, CIs over seeds), data/grades and the
    signal-by-ratio figure."""
    from difflens.organism import zoo as Z
    from difflens.pipelines.discover_zoo import run_discover_zoo

    names = [Z.zoo_spec(n).name for n in name] or None
    ratios = [Z.check_ratio(r) for r in ratio] or None
    from difflens.pipelines.discover import DiscoverConfig

    config = DiscoverConfig() if methods is None else DiscoverConfig(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()))
    res = run_discover_zoo(out_dir, names=names, ratios=ratios, seeds=list(seed) or (0, 1, 2),
                           config=config, small=small, progress=True)
    table = res.grades
    for (organism, r, method), g in table.groupby(["organism", "ratio", "method"], sort=False):
        out.print(f"{organism} {r}:1 {method}: planted share {g['planted_share'].mean():.2f} "
                  f"(n={len(g)} seeds)", highlight=False)
    out.print(f"wrote {out_dir}/summary.json, data/grades, figures/signal_by_ratio")
