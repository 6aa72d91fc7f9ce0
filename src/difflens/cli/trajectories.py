"""``difflens trajectories run|import``: cumulative-mean paths on the sphere."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from difflens.capture import read_prompts
from difflens.cli._common import (
    MaxInputs,
    OutDir,
    Seed,
    friendly_errors,
    vocab,
)
from difflens.cli._options import (
    ENGINE,
    LOADING,
    MODELS,
    REQUIRED,
    build,
    config_of,
    config_params,
    engine,
    load_models,
)
from difflens.errors import InputError
from difflens.inputs.prompts import read_prompt_metadata
from difflens.models.engines import use_engine

RankSegments = Annotated[str, typer.Option(
    "--rank-segments", help="Jumps used for token ranking and sentiment: all | prompt | "
                            "continuation.")]

app = typer.Typer(help="Trajectories on the sphere: paths of base and tuned, jumps, sentiment.",
                  no_args_is_help=True)
out = Console()


def _report(summary: dict, out_dir: Path) -> None:  # type: ignore[type-arg]
    for kind in ("prompt", "continuation"):
        rows = summary[kind]["distance_by_index"]
        if rows:
            r0 = rows[0]
            out.print(f"{kind}: base-tuned distance at index 0: {r0['value']:.3f} rad "
                      f"[{r0['ci_low']:.3f}, {r0['ci_high']:.3f}] n={r0['n']}")
    top = summary["jumps"]["top_tokens"][:5]
    if top:
        out.print("largest jumps after: " + ", ".join(
            f"{t['text']!r} {t['value']:.2f} (n={t['n']})" for t in top))
    block, space = ((summary["full"], "full dimension") if summary.get("full")
                    else (summary, "sphere"))
    diff = block["jumps"]["mean_by_index_diff"]
    if diff:
        o = diff["overall"]
        out.print(f"mean jump, tuned - base ({space}): {o['value']:+.4f} rad "
                  f"[{o['ci_low']:+.4f}, {o['ci_high']:+.4f}] "
                  f"({'paired' if diff['paired'] else 'unpaired'}, n={o['n']} prompt-indices)")
    for m, v in block["direction"]["turn_angle"].items():
        o = v["overall"]
        out.print(f"turn between moves, {m} ({space}): {o['value']:.3f} rad "
                  f"[{o['ci_low']:.3f}, {o['ci_high']:.3f}] n={o['n']}")
    for m, v in summary["sentiment"]["jump_weighted"].items():
        out.print(f"jump-weighted sentiment {m}: {v['value']:.4f} [{v['ci_low']:.4f}, "
                  f"{v['ci_high']:.4f}] n={v['n']}")
    out.print(f"wrote {out_dir}/summary.json, data/, figures/, index.html")


def _run(**v: Any) -> None:
    """Paths of prompts and sampled continuations from one model, a pair or a set."""
    from difflens.pipelines.trajectories import TrajectoriesConfig, run_trajectories

    config = config_of(TrajectoriesConfig, v)  # options checked before anything loads
    ray_engine = engine(v)
    texts = read_prompts(v["prompts"], field=v["field"])
    metadata = read_prompt_metadata(v["prompts"], field=v["field"])
    target = load_models(v)
    with use_engine(ray_engine):
        res = run_trajectories(target, texts, v["out_dir"], config, metadata=metadata,
                               progress=True)
    summary = res.summary()
    f = summary["projection"]["faithfulness_spearman"]
    out.print(f"layer {summary['layer']}; projection faithfulness (Spearman) "
              f"{f['value']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}] n={f['n']} pairs")
    _report(summary, v["out_dir"])


def _run_params() -> dict[str, tuple[Any, Any]]:
    from difflens.pipelines.trajectories import TrajectoriesConfig

    return {
        **MODELS, "out_dir": (OutDir, REQUIRED),
        "prompts": (Annotated[Path, typer.Option("--prompts", help="Prompt file: .txt .jsonl "
                                                 ".json .csv")], REQUIRED),
        "field": (Annotated[str | None, typer.Option(
            "--field", help="JSONL/JSON/CSV field holding the prompt.")], None),
        **config_params(TrajectoriesConfig),
        **LOADING, **ENGINE}


app.command("run", cls=vocab({"--continuations": "--samples"}))(build(
    _run, _run_params(), _run.__doc__ or ""))


@app.command("import", cls=vocab({"--max-prompts": "--max-inputs"}))
@friendly_errors
def import_cmd(
    file: Path = typer.Argument(..., help="Trajectory table (.parquet/.csv) or traces JSONL."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder."),
    models: str = typer.Option("GPTJ=base,GPTJ-RLHF=tuned",
                               help="Trace model names -> labels, NAME=label,..."),
    name_pattern: str | None = typer.Option(
        None, help="Regex for trace names with groups model and prompt|cont (default fits "
                   "'GPTJ Prompt', 'GPTJ-RLHF Continuation 3')."),
    min_count: int = typer.Option(20, help="Least occurrences for a token to be ranked."),
    first_n: int | None = typer.Option(None, help="Rank tokens in the first N continuation "
                                                   "steps only."),
    max_inputs: MaxInputs = None,
    rank_segments: RankSegments = "all",
    seed: Seed = 0,
) -> None:
    """Import published trajectories (or a trajectory table) and analyse them."""
    from difflens.pipelines.trajectories import import_trajectories

    mapping = {}
    for part in models.split(","):
        if part.strip():
            if "=" not in part:
                raise InputError(f"--models takes NAME=label pairs like GPTJ=base, got {part!r}")
            k, v = part.split("=", 1)
            mapping[k.strip()] = v.strip()
    res = import_trajectories(file, out_dir, name_pattern=name_pattern, models=mapping,
                              min_count=min_count, first_n=first_n, max_prompts=max_inputs,
                              rank_segments=rank_segments, seed=seed)
    s = res.summary()
    out.print(f"{s['n_prompts']} prompts, {s['n_traces']} traces ({s['n_empty_traces']} empty, "
              f"{s['n_token_mismatch']} with tokens ≠ points: tokens dropped)")
    _report(s, out_dir)
