"""mkdocs-macros: numbers in prose, read from the runs stored under docs/results/.

A page writes ``{{ est("demo", "collapse.divergence.kl_tuned_base_mean") }}`` and gets
``2.79 [2.15, 3.52]``; the value and its CI come from ``docs/results/demo/summary.json``.
The formatting is the one the rendered tables use (``scripts/render_results.py``), so prose
and tables cannot disagree, and a path that does not exist fails the strict build.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import render_results as rr  # noqa: E402

#: The lineages each instrument page shows side by side: (label, stored compare run).
LINEAGES = (
    ("organism (0.9M, built-in)", "demo"),
    ("stories260k (full fine-tuning)", "stories260k-lineage"),
    ("SmolLM2-135M-Instruct (LoRA)", "smollm2-lineage"),
)


def _metric(run: str, metric: str) -> tuple[str, str]:
    """The attribution key ``metric`` stands for in ``run`` and its label there:
    ``concept_cosine_L*`` is the deepest layer the run has; ``theme_share_*`` the theme
    whose share the lineage moved most (base to its last model)."""
    attribution = rr.summary(run)["attribution"]
    labels = rr.summary(run).get("metric_labels", {})
    if metric == "concept_cosine_L*":
        keys = [k for k in attribution if k.startswith("concept_cosine_L") and all(
            e.get("value") is not None for e in attribution[k].values())]
        key = max(keys, key=lambda k: int(k.rsplit("L", 1)[1]))
        return key, f"layer {key.rsplit('L', 1)[1]}"
    if metric == "theme_share_*":
        keys = [k for k in attribution if k.startswith("theme_share_")]
        key = max(keys, key=lambda k: abs(sum(e["value"] for e in attribution[k].values())))
        return key, labels.get(key, f"theme {key.rsplit('_', 1)[1]}")
    return metric, metric.replace("_", " ")


def define_env(env):
    """Register the macros: num, est, pct, value, plain, cite, cmd."""

    @env.macro
    def num(run: str, path: str, sig: int = 3) -> str:
        """The number at ``path`` in run ``run``'s summary, to ``sig`` significant digits."""
        return rr.num(run, path, sig)

    @env.macro
    def est(run: str, path: str, sig: int = 3) -> str:
        """The number at ``path`` with its stored 95% CI."""
        return rr.est(run, path, sig)

    @env.macro
    def pct(run: str, path: str, sig: int = 2, ci: bool = False) -> str:
        """The fraction at ``path`` as a percentage (with its CI when ``ci``)."""
        if ci:
            return rr.est(run, path, sig, pct=True)
        return rr.num(run, path, sig, pct=True)

    @env.macro
    def value(run: str, path: str):
        """The raw value at ``path`` (a string, a count, a list)."""
        return rr.value(run, path)

    @env.macro
    def plain(run: str, path: str) -> str:
        """A setting as written, not rounded."""
        return rr.plain(rr.value(run, path))

    @env.macro
    def cite(run: str) -> str:
        """Where a section's numbers come from: the stored run, its command and commit."""
        return rr.cite(run)

    @env.macro
    def cmd(run: str) -> str:
        """The exact command that produced a stored run."""
        return rr.provenance(run)["command"]

    @env.macro
    def wall(run: str) -> str:
        """The stored run's wall time, in seconds or minutes."""
        seconds = rr.provenance(run).get("wall_s")
        if seconds is None:
            raise KeyError(f"stored run {run!r} has no wall_s in run.json")
        return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

    @env.macro
    def rss(run: str) -> str:
        """The stored run's peak resident memory (run.json's ``peak_rss_mib``)."""
        mib = rr.provenance(run).get("peak_rss_mib")
        if mib is None:
            raise KeyError(f"stored run {run!r} has no peak_rss_mib in run.json")
        return f"{mib:,.0f} MiB"

    @env.macro
    def lineages(metrics: list[str]) -> str:
        """Each stage's change of each of ``metrics`` (``attribution.<metric>.<stage>``,
        with 95% CIs) on the organism and the two real lineages, a row per lineage and
        stage. A change whose CI includes 0 is marked "(CI includes 0)"; under the table a
        line names each metric that no stage of a lineage moved."""
        header = "| lineage | stage | " + " | ".join(
            m.replace("concept_cosine_L*", "concept cosine (deepest layer)").replace(
                "theme_share_*", "share of the theme that moved most").replace("_", " ")
            for m in metrics) + " |"
        rows = [header, "|" + "---|" * (len(metrics) + 2)]
        nothing = []
        for label, run in LINEAGES:
            stages = rr.summary(run)["lineage"][1:]
            still = dict.fromkeys(metrics, True)
            for stage in stages:
                cells = []
                for m in metrics:
                    key, what = _metric(run, m)
                    path = f"attribution.{key}.{stage}"
                    lo, hi = rr.interval(run, path)
                    zero = lo <= 0 <= hi
                    still[m] = still[m] and zero
                    extra = f" ({what})" if m.endswith("*") else ""
                    cells.append(rr.est(run, path) + (" (CI includes 0)" if zero else "")
                                 + extra)
                rows.append(f"| {label} | {stage} | " + " | ".join(cells) + " |")
            nothing += [f"- {label}: no stage moved {m.replace('_', ' ')} (every CI includes 0)."
                        for m in metrics if still[m]]
        return "\n".join(rows) + ("\n\n" + "\n".join(nothing) if nothing else "")

    @env.macro
    def control_lineages() -> str:
        """Per model of the organism and the two real lineages: the state probe's AUC, the
        bad rate without control, and the controller (and gain) with the lowest bad rate,
        with its perplexity ratio (the fluency it cost), all with their stored CIs."""
        rows = ["| lineage | model | probe AUC | bad rate, no control | best controller | "
                "its bad rate | its perplexity ratio |", "|---|---|---|---|---|---|---|"]
        for label, run in LINEAGES:
            for model in rr.summary(run)["lineage"]:
                base = f"control.{model}"
                ctl = rr.value(run, f"{base}.controllers")
                best = min(((name, gain) for name, gains in ctl.items() if name != "none"
                            for gain in gains),
                           key=lambda c: rr.value(run, f"{base}.controllers.{c[0]}[{c[1]}]"
                                                  f".bad_rate"))
                at = f"{base}.controllers.{best[0]}[{best[1]}]"
                rows.append(
                    f"| {label} | {model} | {rr.est(run, f'{base}.probe.auc')} | "
                    f"{rr.est(run, f'{base}.controllers.none[0].bad_rate')} | "
                    f"{best[0].replace('_', ' ')}, gain {best[1]} | "
                    f"{rr.est(run, f'{at}.bad_rate')} | {rr.est(run, f'{at}.ppl_ratio')} |")
        return "\n".join(rows)

    @env.macro
    def cli_reference() -> str:
        """Every visible command, argument and option of the typer app, with its help and
        default, rendered by typer's own documentation generator (`typer ... utils docs`).
        Hidden commands (old spellings kept for one release) are left out."""
        import typer
        import typer.cli
        import typer.main

        from difflens.cli.main import app

        command = typer.main.get_command(app)

        def visible(group) -> None:
            if hasattr(group, "commands"):
                group.commands = {k: v for k, v in group.commands.items() if not v.hidden}
                for sub in group.commands.values():
                    visible(sub)

        visible(command)
        doc = typer.cli.get_docs_for_click(obj=command, ctx=typer.Context(command),
                                           name="difflens", title="difflens")
        return doc.split("\n", 1)[1]  # the page has its own title
