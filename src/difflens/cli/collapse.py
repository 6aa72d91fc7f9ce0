"""``difflens collapse divergence|probes|temperature|tree|attractors|diversity|all``.

Every command writes into ``--out`` and merges its keys into ``OUT/summary.json``, so the
steps can be run one at a time or together (``all``).
"""

import dataclasses
from pathlib import Path

import typer
from rich.console import Console

from difflens.cli._common import friendly_errors
from difflens.errors import InputError
from difflens.report.collapse import STEPS, CollapseConfig, run_collapse

app = typer.Typer(help="Mode collapse and attractors: divergence along text, exact probes, "
                  "temperature sweeps, probability trees, attractor tests, diversity.",
                  no_args_is_help=True)
out = Console()


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{option} takes numbers like 0.5,1,2, got {text!r}") from None


def _print(summary: dict, steps: tuple[str, ...], out_dir: Path) -> None:  # type: ignore[type-arg]
    if "divergence" in steps:
        d = summary["divergence"]
        if "kl_tuned_base_mean" in d:
            lo, hi = d["kl_tuned_base_ci95"]
            out.print(f"divergence: KL(tuned‖base) {d['kl_tuned_base_mean']:.4f} [{lo:.4f}, "
                      f"{hi:.4f}] nats/token over {d['n_texts']} texts ({d['n_tokens']} tokens)")
    if "probes" in steps:
        for name, by_model in summary["probes"].items():
            cells = "; ".join(f"{m}: top {r['top_answer']} p={r['top_prob']:.3f}, "
                              f"{r['entropy_bits']:.2f}/{r['max_entropy_bits']:.2f} bits, TVD "
                              f"{r['tvd_uniform']:.3f}, outside {r['outside_mass']:.3f}"
                              for m, r in by_model.items())
            out.print(f"probe {name}: {cells}", highlight=False)
    if "temperature" in steps:
        t = summary["temperature"]
        out.print(f"temperature: best T {t['best_T']:.3g}; TVD(tuned, base) {t['tvd_at_1']:.3f} "
                  f"at T=1 -> {t['residual_tvd']:.3f} [{t['residual_tvd_ci95'][0]:.3f}, "
                  f"{t['residual_tvd_ci95'][1]:.3f}] at best T (n={t['n']})")
    if "tree" in steps:
        for m, t in summary["tree"].items():
            out.print(f"tree {m}: {t['n_nodes']} nodes, top path {t['top_path']!r} p="
                      f"{t['top_path_prob']:.3f}, covered mass {t['covered_mass']:.3f}",
                      highlight=False)
    if "attractors" in steps:
        for m, a in summary["attractors"].items():
            out.print(f"attractors {m}: strength {a['strength']:.3f} [{a['ci_low']:.3f}, "
                      f"{a['ci_high']:.3f}] (chance {a['chance']:.3f}), exact endings "
                      f"{a['exact_rate']:.3f}, n={a['n']}")
    if "diversity" in steps:
        for m, r in summary["diversity"].items():
            out.print(f"diversity {m}: distinct-2 {r['distinct_2']:.3f}, self-BLEU "
                      f"{r['self_bleu']:.3f}, Vendi {r['vendi']:.2f}, Fréchet "
                      f"{r.get('frechet', float('nan')):.4f}")
    out.print(f"wrote {out_dir}/summary.json, data/, figures/, index.html")


def _command(steps: tuple[str, ...], doc: str):  # type: ignore[no-untyped-def]
    @friendly_errors
    def cmd(
        base: str = typer.Option(..., "--base", help="Model: hub id, folder, .gguf or preset."),
        out_dir: Path = typer.Option(..., "--out", help="Output folder."),
        tuned: str | None = typer.Option(None, "--tuned", help="Tuned sibling, for a pair."),
        prompts: Path | None = typer.Option(None, "--prompts", help="Prompts (.txt, .jsonl, "
                                            ".json, .csv) for divergence, attractors, "
                                            "diversity."),
        corpus: Path | None = typer.Option(None, "--corpus", help="Divergence corpus: JSONL "
                                           "with prompt and continuation (else sampled)."),
        sources: str = typer.Option("", help="Models whose samples form the divergence "
                                    "corpus, e.g. tuned (default: all)."),
        max_new_tokens: int = typer.Option(40, help="Tokens per sampled/greedy completion."),
        probes: Path | None = typer.Option(None, "--probes", help="Probe JSONL (default: "
                                           "built-in random number, dice, coin)."),
        probe_names: str = typer.Option("", help="Only these probes, e.g. d6,coin."),
        temperatures: str = typer.Option("", help="Temperature grid (default: 0.25..4, "
                                         "log-spaced)."),
        tree_prompt: str = typer.Option("", help="Prompt of the probability tree."),
        depth: int = typer.Option(4, help="Tree depth."),
        top_k: int = typer.Option(5, help="Children per tree node."),
        min_prob: float = typer.Option(1e-3, help="Do not expand paths below this "
                                       "probability."),
        positions: str = typer.Option("0.2,0.4,0.6", help="Perturbation points (fractions "
                                      "of the completion)."),
        insert: str = typer.Option(" Suddenly,", help="Phrase inserted by the attractor "
                                   "test."),
        k_samples: int = typer.Option(16, help="Samples per prompt for diversity."),
        reference: Path | None = typer.Option(None, "--reference", help="Reference texts "
                                              "for the Fréchet distance (.txt/.jsonl; default: "
                                              "a second draw of the first model)."),
        encoder: str = typer.Option("all-MiniLM-L6-v2", help="Sentence encoder (name or "
                                    "folder)."),
        seed: int = typer.Option(0, help="Seed of sampling and bootstraps."),
        device: str | None = typer.Option(None, help="cpu or cuda."),
    ) -> None:
        from difflens.analysis.probes import DEFAULT_TEMPERATURES
        from difflens.capture.prompts import read_prompts
        from difflens.models import ModelPair, load_model

        ps = tuple(read_prompts(prompts)) if prompts else ()
        ref = tuple(read_prompts(reference, field="text")) if reference else None
        cfg = CollapseConfig(
            prompts=ps, corpus=str(corpus) if corpus else None,
            sources=tuple(s for s in sources.split(",") if s), max_new_tokens=max_new_tokens,
            probes=str(probes) if probes else None,
            probe_names=tuple(n for n in probe_names.split(",") if n),
            temperatures=_floats(temperatures, "--temperatures") or DEFAULT_TEMPERATURES,
            tree_prompt=tree_prompt, tree_depth=depth, tree_top_k=top_k,
            tree_min_prob=min_prob, positions=_floats(positions, "--positions"),
            insert=insert, k_samples=k_samples, reference=ref,
            reference_name=str(reference) if reference else "", encoder=encoder, seed=seed)
        if "tree" in steps and (depth < 1 or top_k < 1 or not 0 <= min_prob < 1):
            raise InputError(f"need --depth >= 1, --top-k >= 1 and 0 <= --min-prob < 1; got "
                             f"{depth}, {top_k}, {min_prob}")
        run_steps = steps
        if len(steps) > 1:  # `all`: the tree defaults to the first prompt; one model
            if not cfg.tree_prompt and ps:  # cannot be compared with itself in temperature
                cfg = dataclasses.replace(cfg, tree_prompt=ps[0])
            run_steps = tuple(s for s in steps if s != "temperature" or tuned is not None)
        model = load_model(base, device=device)
        target = model if tuned is None else ModelPair(model, load_model(tuned, device=device))
        run = run_collapse(target, out_dir, steps=run_steps, config=cfg, progress=True)
        _print(run.summary, run_steps, out_dir)

    cmd.__doc__ = doc
    return cmd


_DOCS = {
    "divergence": "Per-token entropy, KL both ways, top-1 agreement and log-probs along text.",
    "probes": "Random-number, dice and coin probes scored exactly from logits.",
    "temperature": "Is the tuned model just the base at a lower temperature? (pair)",
    "tree": "Probability tree of continuations, base and tuned side by side.",
    "attractors": "Perturb greedy completions, regenerate, and compare the endings.",
    "diversity": "distinct-n, self-BLEU, embedding spread, Vendi and Fréchet of K samples.",
}
for _step in STEPS:
    app.command(_step)(_command((_step,), _DOCS[_step]))
app.command("all")(_command(STEPS, "Every step (the tree defaults to the first prompt; the "
                                   "temperature sweep runs for a pair)."))
