"""``difflens themes sample|fit|chains|predict|evaluate|all``: themes of sampled continuations;
``consistency`` and ``generalisation`` run on request.

Every step writes into ``--out`` and reuses what earlier steps stored there (samples, the
theme model, each segment's theme, predictions), so they can run one at a time, in order,
or together (``all``)."""

from pathlib import Path

import typer
from rich.console import Console

from difflens.cli._common import (
    Base,
    BatchSize,
    Device,
    DeviceMap,
    Dtype,
    EngineName,
    LayersPath,
    MaxNewTokens,
    OutDir,
    PromptsFile,
    Quantize,
    RayAddress,
    Revision,
    Samples,
    Seed,
    Tuned,
    WorkerGpus,
    Workers,
    engine_of,
    friendly_errors,
    load_target,
    vocab,
)
from difflens.errors import InputError
from difflens.models.engines import use_engine
from difflens.pipelines.themes import ThemesConfig

app = typer.Typer(help="Themes and trajectory prediction: sample, cluster into themes, "
                  "chains, predict chains from activations.", no_args_is_help=True)
out = Console()

STEP_SETS = {"sample": ("sample",), "fit": ("sample", "fit"), "chains": ("sample", "chains"),
             "predict": ("sample", "predict"), "evaluate": ("sample", "evaluate"),
             "all": ("sample", "fit", "chains", "predict", "evaluate"),
             "consistency": ("sample", "consistency"),
             "generalisation": ("sample", "generalisation")}


def _print(summary: dict, out_dir: Path) -> None:  # type: ignore[type-arg]
    out.print(f"{summary['n_prompts']} prompts × {summary['k_samples']} continuations "
              f"({summary.get('empty_continuations', 0)} empty)")
    if "n_themes" in summary:
        out.print(f"{summary['n_themes']} themes from {summary['n_segments']} segments "
                  f"(outliers {summary['outlier_share']:.3f}):")
        for t in summary["themes"]:
            out.print(f"  {t['theme']:>2} {t['name']:<30} n={t['size']:<6} e.g. "
                      f"{t['examples'][0][:70]!r}", highlight=False)
    if "best_layer" in summary:
        for name, by_layer in summary["predictors"].items():
            for layer, r in by_layer.items():
                if name == "probe" and int(layer) != summary["best_layer"]:
                    continue
                kl, gain = r["kl"], r["kl_gain"]
                out.print(f"  {name} (layer {layer}): KL {kl['value']:.3f} [{kl['ci_low']:.3f}, "
                          f"{kl['ci_high']:.3f}], gain over marginal {gain['value']:.3f} "
                          f"[{gain['ci_low']:.3f}, {gain['ci_high']:.3f}], top-1 "
                          f"{r['top1']['value']:.3f}, ECE {r['ece']['value']:.3f}")
        for name, r in summary["baselines"].items():
            kl = r["kl"]
            out.print(f"  baseline {name}: KL {kl['value']:.3f} [{kl['ci_low']:.3f}, "
                      f"{kl['ci_high']:.3f}], top-1 {r['top1']['value']:.3f}")
    if "organism" in summary:
        o = summary["organism"]
        out.print(f"organism: ARI {o['ari']:.3f}, transition TVD {o['transition_tvd']:.3f}")
    if "consistency" in summary:
        c = summary["consistency"]
        r = c["resample_ari"]
        out.print(f"consistency: ARI {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                  f"between fits of two sample sets (k = {c['k'][0]}, {c['k'][1]}; "
                  f"{r['n_prompts']} prompts)")
    g = summary.get("prediction", {}).get("generalisation")
    if g:
        for split in ("group_split", "random_split"):
            b = g[split]
            out.print(f"{split}: " + ", ".join(
                f"{name} KL {b[name]['kl']['value']:.3f} [{b[name]['kl']['ci_low']:.3f}, "
                f"{b[name]['kl']['ci_high']:.3f}]"
                for name in ("probe", "sentence_embedding", "marginal")))
    out.print(f"wrote {out_dir}/summary.json, data/, figures/, index.html")


def _command(step: str, doc: str):  # type: ignore[no-untyped-def]
    @friendly_errors
    def cmd(
        base: Base,
        out_dir: OutDir,
        tuned: Tuned = None,
        prompts: PromptsFile = None,
        organism: int = typer.Option(0, "--organism", help="Use N held-out world openings "
                                     "(enables the ground-truth checks)."),
        samples: Samples = ThemesConfig.k_samples,
        max_new_tokens: MaxNewTokens = ThemesConfig.max_new_tokens,
        temperature: float = typer.Option(1.0, help="Sampling temperature."),
        segment: str = typer.Option("sentences", help="sentences | tokens:N."),
        encoder: str = typer.Option("all-MiniLM-L6-v2", help="Sentence encoder."),
        method: str = typer.Option("kmeans", help="kmeans | hdbscan."),
        k_min: int = typer.Option(4, help="k-means: fewest themes."),
        k_max: int = typer.Option(16, help="k-means: most themes."),
        min_cluster_size: int = typer.Option(15, help="HDBSCAN: smallest theme."),
        merge_repeats: bool = typer.Option(True, "--merge-repeats/--keep-repeats",
                                           help="Merge consecutive repeats in chains."),
        max_chain: int = typer.Option(3, help="Chain length m for distributions."),
        layers: str = typer.Option("all", help="Layers for the probes."),
        m_act: int = typer.Option(8, help="Last prompt states fed to the transformer."),
        test_fraction: float = typer.Option(0.3, help="Held-out share of prompts."),
        seed: Seed = ThemesConfig.seed,
        chat: bool = typer.Option(False, "--chat", help="Wrap prompts in the chat template."),
        labeller_url: str = typer.Option("", help="OpenAI-compatible endpoint to name themes."),
        labeller_model: str = typer.Option("", help="Model name for the labeller."),
        batch_size: BatchSize = ThemesConfig.batch_size,
        device: Device = None,
        dtype: Dtype = None,
        device_map: DeviceMap = None,
        quantize: Quantize = None,
        revision: Revision = None,
        layers_path: LayersPath = None,
        engine: EngineName = "local",
        address: RayAddress = None,
        workers: Workers = 2,
        worker_gpus: WorkerGpus = 0.0,
    ) -> None:
        from difflens.inputs.prompts import read_prompts
        from difflens.organism.truth import organism_theme_prompts
        from difflens.pipelines.themes import run_themes

        if (prompts is None) == (organism == 0):
            raise InputError("give exactly one of --prompts FILE or --organism N")
        truth = None
        if organism:
            texts, truth = organism_theme_prompts(organism, seed=seed + 555)
        else:
            assert prompts is not None
            texts = tuple(read_prompts(prompts))
        if not texts:
            raise InputError(f"{prompts}: no usable prompts")
        mode, _, n = segment.partition(":")
        try:
            window = int(n) if n else 16
        except ValueError:
            raise InputError(f"--segment takes sentences or tokens:N, got {segment!r}") from None
        config = ThemesConfig(
            prompts=texts, truth=truth, k_samples=samples, max_new_tokens=max_new_tokens,
            temperature=temperature, seed=seed, batch_size=batch_size, chat=chat,
            segment=mode, window=window, encoder=encoder, method=method, k_min=k_min,
            k_max=k_max, min_cluster_size=min_cluster_size, merge_repeats=merge_repeats,
            max_chain=max_chain, layers=layers, m_act=m_act, test_fraction=test_fraction,
            labeller_url=labeller_url, labeller_model=labeller_model)
        target = load_target(base, tuned, revision=revision, dtype=dtype, device=device,
                             layers_path=layers_path, device_map=device_map,
                             quantization=quantize)
        with use_engine(engine_of(engine, address, workers, worker_gpus)):
            run = run_themes(target, out_dir, config=config, steps=STEP_SETS[step],
                             progress=True)
        _print(run.summary, out_dir)

    cmd.__doc__ = doc
    return cmd


#: old flag names (one release): themes compares two models, so the base is --base.
_RENAMED = {"--model": "--base", "--k": "--samples"}
for _name, _doc in (("sample", "Sample K continuations per prompt (stored, resumable)."),
                    ("fit", "Segment, embed and cluster the continuations into themes."),
                    ("chains", "Chains of themes per continuation, and their distributions."),
                    ("predict", "Predict theme distributions from the prompt's activations."),
                    ("evaluate", "Everything, plus the organism's ground-truth checks."),
                    ("all", "Every step."),
                    ("consistency", "Fit themes on a second, independent sample set of the "
                     "same prompts and compare the two fits (ARI)."),
                    ("generalisation", "Predict first themes of each group of prompts "
                     "(the organism's start themes) from the other groups (after fit).")):
    app.command(_name, cls=vocab(_RENAMED))(_command(_name, _doc))
