"""``difflens demo``: the main job, end to end on the built-in model organism."""

from pathlib import Path

import typer
from rich.console import Console

from difflens.cli._common import friendly_errors

out = Console()


@friendly_errors
def demo_cmd(
    out_dir: Path = typer.Option(Path("difflens-demo"), "--out", help="Output directory."),
    seed: int = typer.Option(0, help="Seed of the organism."),
    small: bool = typer.Option(False, help="Use the reduced organism (seconds; for tests)."),
) -> None:
    """Build the organism if missing, run capture and every analysis, write a report."""
    from difflens.organism.build import OrganismConfig
    from difflens.pipelines.demo import MEAN_KEY, run_demo
    from difflens.report.figures import format_ci

    cfg = OrganismConfig.small(seed) if small else OrganismConfig(seed=seed)
    summary = run_demo(out_dir, config=cfg, n_concept_items=60 if small else 400,
                       n_trajectory_prompts=8 if small else 40,
                       n_collapse_prompts=6 if small else 24,
                       n_control_prompts=6 if small else 32,
                       n_theme_prompts=24 if small else 300, theme_samples=8 if small else 16,
                       progress=True)
    o = summary["organism"]
    out.print(f"[green]report:[/] {out_dir / 'index.html'}   summary: {out_dir / 'summary.json'}")
    for key, name in (("reward", "reward (VADER)"), ("entropy", "entropy (nats/token)"),
                      ("celebration_share", "celebration share"), ("chance_tvd", "chance TVD")):
        b, t = (format_ci(o[m][MEAN_KEY[key]], o[m][key + "_ci95"]) for m in ("base", "tuned"))
        out.print(f"{name:<22} base {b}  tuned {t}  n={o['base'][key + '_n']}")
    for label, rows in summary["concepts"]["separation_auc"].items():
        best = max(rows, key=lambda r: r["auc"])
        out.print(f"kind-vs-cruel vector, {label}: best held-out AUC "
                  f"{format_ci(best['auc'], [best['ci_low'], best['ci_high']], best['n'])} "
                  f"at layer {best['layer']}")
    tr = summary["trajectories"]
    rows = tr["continuation"]["distance_by_index"]
    full = tr["full"]["continuation"]["distance_by_index"]
    if rows and full:
        last = [r for r in full if r["n"] >= 30][-1]
        f = tr["projection"]["faithfulness_spearman"]
        out.print(f"trajectories: base-tuned continuation angle {full[0]['mean']:.3f} rad at step "
                  f"0 → {last['mean']:.3f} at step {last['index']} (full dimension, "
                  f"n={full[0]['n']} paths); sphere faithfulness {f['mean']:.3f}")
    col = summary["collapse"]
    for label in ("base", "tuned"):
        a, d = col["attractors"][label], col["diversity"][label]
        out.print(f"collapse, {label}: attractor strength "
                  f"{format_ci(a['strength'], [a['ci_low'], a['ci_high']], a['n'])}; Vendi "
                  f"{format_ci(d['vendi'], d['vendi_ci95'], d['n_prompts'])}; top tree path p="
                  f"{col['tree'][label]['top_path_prob']:.3f}")
    t = col["temperature"]
    out.print(f"is the tuned model a colder base? best T {t['best_T']:.3g}, TVD left "
              f"{format_ci(t['residual_tvd'], t['residual_tvd_ci95'], t['n'])} (at T=1 "
              f"{t['tvd_at_1']:.3f})")
    ctl = summary["control"]
    p = ctl["probe"]
    out.print(f"control: probe layer {p['layer']} AUC {p['auc']:.3f} (segments "
              f"{p['auc_segment']:.3f}); bad rate by probe / world labeller:")
    for kind, by_gain in ctl["controllers"].items():
        for g, r in by_gain.items():
            out.print(f"  {kind:>12} g={g:<4} "
                      f"{format_ci(r['bad_rate'], [r['bad_rate_ci_low'], r['bad_rate_ci_high']])}"
                      f" / {r['bad_rate_independent']:.3f}, ppl x{r['ppl_ratio']:.2f}, "
                      f"KL {r['kl']:.3f}, speed x{r['speed_ratio']:.2f}", highlight=False)
    th = summary["themes"]
    if "best_layer" in th:
        pr = th["predictors"]["probe"][str(th["best_layer"])]
        mg = th["baselines"]["marginal"]
        out.print(f"themes: {th['n_themes']} themes, ARI vs the world's themes "
                  f"{th['organism']['ari']:.3f}; first-theme KL probe (layer {th['best_layer']})"
                  f" {format_ci(pr['kl'], [pr['kl_ci_low'], pr['kl_ci_high']])} vs marginal "
                  f"{format_ci(mg['kl'], [mg['kl_ci_low'], mg['kl_ci_high']])}")
    kl = summary["pair"]["kl_tuned_base"]
    out.print(f"KL(tuned‖base) on held-out stories, nats/token: "
              f"{format_ci(kl['mean'], kl['ci95'], kl['n'])} tokens")
