"""``difflens collapse divergence|probes|temperature|tree|attractors|diversity|all``.

Every command writes into ``--out`` and merges its keys into ``OUT/summary.json``, so the
steps can be run one at a time or together (``all``). Each step's command takes only the
options that step reads (``_STEP_OPTIONS``); every option is a field of
``CollapseConfig`` (flag, help, default), and ``all``
takes the union.
"""

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from difflens.cli._common import (
    MaxInputs,
    OutDir,
    PromptsFile,
    err,
    friendly_errors,
    vocab,
)
from difflens.cli._options import (
    ENGINE,
    LOADING,
    MODELS,
    REQUIRED,
    config_of,
    config_params,
    engine,
    load_models,
)
from difflens.models.engines import use_engine
from difflens.pipelines.collapse import STEPS, CollapseConfig, run_collapse
from difflens.report.collapse import probe_items, rank_text, unanswered_note, value_of

app = typer.Typer(help="Mode collapse and attractors: divergence along text, exact probes, "
                  "temperature sweeps, probability trees, attractor tests, diversity.",
                  no_args_is_help=True)
out = Console()

#: option name -> (annotated type, default), in help order: the models, the inputs, every
#: field of CollapseConfig (flag, help and default as declared there), the loading options.
_OPTIONS: dict[str, tuple[Any, Any]] = {
    **MODELS,
    "out_dir": (OutDir, REQUIRED),
    "prompts": (PromptsFile, None),
    "max_inputs": (MaxInputs, None),
    "reference": (Annotated[Path | None, typer.Option(
        "--reference", help="Reference texts for the Fréchet distance (.txt/.jsonl; default: "
        "a second draw of the first model).")], None),
    **config_params(CollapseConfig),
    **LOADING,
    **ENGINE,
}
_COMMON = ("model", "base", "out_dir", "tuned")
_LOADING = ("batch_size", *LOADING)
#: the options each step reads (besides the models, --out and the loading options).
_STEP_OPTIONS: dict[str, tuple[str, ...]] = {
    "divergence": ("prompts", "max_inputs", "corpus", "sources", "max_new_tokens", "seed"),
    "probes": ("probes", "probe_names", "seed"),
    "temperature": ("probes", "probe_names", "temperatures", "prompts", "max_inputs", "samples",
                    "max_new_tokens", "free_text_temperatures", "encoder", "seed"),
    "tree": ("tree_prompt", "depth", "top_k", "min_prob"),
    "attractors": ("prompts", "max_inputs", "max_new_tokens", "perturb_at", "insert",
                   "encoder", "seed"),
    "diversity": ("prompts", "max_inputs", "samples", "max_new_tokens", "reference", "encoder",
                  "seed", "prob_caps", "engine", "address", "workers", "worker_gpus"),
}
#: old flag names (one release): the samples per prompt, and --positions, which elsewhere
#: means token positions.
_RENAMED = {"--k-samples": "--samples", "--positions": "--perturb-at"}


def _flag(name: str) -> str:
    """The flag of option ``name`` (as declared in ``_OPTIONS``)."""
    info = typing.get_args(_OPTIONS[name][0])[1]
    # typer keeps a flag given as the first positional argument in ``default``
    return str(info.param_decls[0] if info.param_decls else info.default)


def _print(summary: dict, steps: tuple[str, ...], out_dir: Path) -> None:  # type: ignore[type-arg]
    if "divergence" in steps:
        d = summary["divergence"]
        if "kl_tuned_base_mean" in d:
            kl = d["kl_tuned_base_mean"]
            out.print(f"divergence: KL(tuned‖base) {kl['value']:.4f} [{kl['ci_low']:.4f}, "
                      f"{kl['ci_high']:.4f}] nats/token over {d['n_texts']} texts "
                      f"({d['n_tokens']} tokens)")
    if "probes" in steps:
        for name, by_model in probe_items(summary["probes"]):
            cells = "; ".join(f"{m}: top {r['top_answer']} p={r['top_prob']:.3f}, "
                              f"{r['entropy_bits']['value']:.2f}/{r['max_entropy_bits']:.2f} "
                              f"bits, TVD {r['tvd_uniform']['value']:.3f}, outside "
                              f"{r['outside_mass']['value']:.3f}"
                              if r["answered"] else f"{m}: {unanswered_note(r)}"
                              for m, r in by_model.items())
            out.print(f"probe {name}: {cells}", highlight=False)
        for name, r in summary["probes"].get("rank_correlation", {}).items():
            out.print(f"probe {name}: rank correlation base vs tuned: Spearman "
                      f"{rank_text(r['spearman'])}, Kendall {rank_text(r['kendall'])} over "
                      f"{r['n_answers']} answers", highlight=False)
    if "temperature" in steps:
        t = summary["temperature"]
        res = t["residual_tvd"]
        out.print(f"temperature: best T {t['best_T']:.3g}; TVD(tuned, base) "
                  f"{t['tvd_at_1']['value']:.3f} at T=1 -> {res['value']:.3f} "
                  f"[{res['ci_low']:.3f}, {res['ci_high']:.3f}] at best T (n={t['n']})")
        for metric, m in t.get("free_text", {}).get("meet", {}).items():
            out.print(f"free text {metric}: tuned meets the base (at T=1) at "
                      f"T={m['value']:.3g} [{m['ci_low']:.3g}, {m['ci_high']:.3g}] "
                      f"(n={m['n_prompts']} prompts)")
    if "tree" in steps:
        for m, t in summary["tree"].items():
            out.print(f"tree {m}: {t['n_nodes']} nodes, top path {t['top_path']!r} p="
                      f"{t['top_path_prob']:.3f}, covered mass {t['covered_mass']:.3f}",
                      highlight=False)
    if "attractors" in steps:
        for m, a in summary["attractors"].items():
            st = a["strength"]
            out.print(f"attractors {m}: strength {st['value']:.3f} [{st['ci_low']:.3f}, "
                      f"{st['ci_high']:.3f}] (chance {a['chance']:.3f}), exact endings "
                      f"{a['exact_rate']['value']:.3f}, n={a['n']}")
    if "diversity" in steps:
        for m, r in summary["diversity"].items():
            out.print(f"diversity {m}: distinct-2 {value_of(r['distinct_2']):.3f}, self-BLEU "
                      f"{value_of(r['self_bleu']):.3f}, Vendi {value_of(r['vendi']):.2f}, "
                      f"Fréchet {value_of(r.get('frechet')):.4f}, precision "
                      f"{value_of(r.get('precision')):.2f}, recall "
                      f"{value_of(r.get('recall')):.2f}")
    if "decollapse" in summary and "diversity" in steps:
        d = summary["decollapse"]
        for label, r in d["sets"].items():
            ppl = r["ppl_under_scorer"]
            out.print(f"de-collapse {label}: Vendi {value_of(r.get('vendi')):.2f}, distinct-2 "
                      f"{value_of(r.get('distinct_2')):.3f}, perplexity under {d['scorer']} "
                      f"{ppl['value']:.2f} [{ppl['ci_low']:.2f}, {ppl['ci_high']:.2f}] "
                      f"(n={r['n_texts']} texts)", highlight=False)
    out.print(f"wrote {out_dir}/summary.json, data/, figures/, index.html")


def _run(steps: tuple[str, ...], values: dict[str, Any]) -> None:
    from difflens.inputs.prompts import read_prompts

    v = {name: default for name, (_, default) in _OPTIONS.items()} | values
    prompts, reference = v["prompts"], v["reference"]
    cfg = config_of(CollapseConfig, v, base=CollapseConfig(steps=steps))  # before loading
    ps = tuple(read_prompts(prompts)[:v["max_inputs"]]) if prompts else ()
    ref = tuple(read_prompts(reference, field="text")) if reference else None
    cfg = dataclasses.replace(cfg, reference=ref,
                              reference_name=str(reference) if reference else "")
    if len(steps) > 1:  # `all`: the tree defaults to the first prompt; one model
        if not cfg.tree_prompt and ps:  # cannot be compared with itself in temperature
            cfg = dataclasses.replace(cfg, tree_prompt=ps[0])
        if v["tuned"] is None and len(v["model"] or []) < 2:
            cfg = dataclasses.replace(cfg, steps=tuple(s for s in steps if s != "temperature"))
    target = load_models(v)
    with use_engine(engine(v)):
        run = run_collapse(target, ps, v["out_dir"], cfg, progress=True)
    _print(run.summary(), cfg.steps, v["out_dir"])


def _command(steps: tuple[str, ...], doc: str):  # type: ignore[no-untyped-def]
    """The command of ``steps``, taking exactly the options they read."""
    wanted = {*_COMMON, *_LOADING, *(n for s in steps for n in _STEP_OPTIONS[s])}
    # Before 0.2 every step took every option: the others are still accepted, hidden, for
    # one release, with a line saying they do nothing here.
    others = [name for name in _OPTIONS if name not in wanted]

    def cmd(**values: Any) -> None:
        for name in others:
            if values.pop(name, None) is not None:
                readers = [s for s, names in _STEP_OPTIONS.items() if name in names]
                err.print(f"[yellow]warning:[/] {_flag(name)} has no effect on `difflens "
                          f"collapse {steps[0] if len(steps) == 1 else 'all'}`; it is read "
                          f"by {', '.join(readers)}", highlight=False, soft_wrap=True)
        _run(steps, values)

    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann,
                                default=default)
              for name, (ann, default) in _OPTIONS.items() if name in wanted]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[str | None, typer.Option(
                                     _flag(name), hidden=True)])
               for name in others]
    cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cmd.__doc__ = doc
    return friendly_errors(cmd)


_DOCS = {
    "divergence": "Per-token entropy, KL both ways, top-1 agreement and log-probs along text.",
    "probes": "Random-number, dice and coin probes scored exactly from logits.",
    "temperature": "Is the tuned model just the base at a lower temperature? (pair)",
    "tree": "Probability tree of continuations, base and tuned side by side.",
    "attractors": "Perturb greedy completions, regenerate, and compare the endings.",
    "diversity": "distinct-n, self-BLEU, embedding spread, Vendi and Fréchet of K samples.",
}
for _step in STEPS:
    app.command(_step, cls=vocab(_RENAMED))(_command((_step,), _DOCS[_step]))
app.command("all", cls=vocab(_RENAMED))(_command(
    STEPS, "Every step (the tree defaults to the first prompt; the temperature sweep runs for "
    "a pair)."))
