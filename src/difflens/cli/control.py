"""``difflens control train-probe|monitor|evaluate``: closed-loop control with state probes.

Noun-verb, like the other groups: the noun is what the group works on (here, controlling a
generation through a state probe), the verbs are the steps in the order they are used:
``train-probe`` (fit the probe the other two read), ``monitor`` (one live generation, each
token coloured by its score) and ``evaluate`` (bad rate, fluency and speed per controller).
The old paths ``difflens probe train`` and ``difflens monitor`` still work for one release.
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from difflens.cli._common import (
    BatchSize,
    Device,
    DeviceMap,
    Dtype,
    LayersPath,
    MaxInputs,
    MaxInputsCount,
    MaxNewTokens,
    MergeAdapters,
    OutDir,
    Quantize,
    Revision,
    Seed,
    friendly_errors,
    load,
    vocab,
)
from difflens.cli._options import (
    ENGINE,
    LOADING,
    REQUIRED,
    OneModel,
    build,
    config_of,
    config_params,
    engine,
    loading,
    one_model,
)
from difflens.control.evaluate import ControlConfig
from difflens.control.self_judge import SelfJudgeConfig
from difflens.control.state_probe import ProbeConfig
from difflens.errors import InputError
from difflens.models.engines import use_engine

app = typer.Typer(help="Closed-loop control with state probes (a score in [0, 1] per token "
                  "from hidden states): train a probe, monitor a generation, evaluate "
                  "controllers and gains.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

FORMATS = ("auto", "labelled", "pairs", "organism")


def _format_of(path: Path | None, fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    if path is None:
        raise InputError("give --data FILE (JSONL with text/label, or chosen/rejected pairs), "
                         "or --format organism")
    from difflens._io import text_lines

    if not path.is_file():
        raise InputError(f"labelled data {path} does not exist")
    lines = text_lines(path) or path.read_text(encoding="utf-8", errors="replace").splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        raise InputError(f"{path}:1: not valid JSON; the data must be JSONL") from None
    return "pairs" if isinstance(obj, dict) and "chosen" in obj else "labelled"


def _train(**v: Any) -> None:
    """Train a state probe and report its held-out AUC per layer (examples: --max-inputs
    examples, or pairs for preference data)."""
    from difflens._io import rich_progress
    from difflens.control.state_probe import check_threshold
    from difflens.inputs.labelled import read_labelled, read_preference_pairs
    from difflens.organism.truth import organism_labelled
    from difflens.pipelines.control import run_probe_training

    config = config_of(ProbeConfig, v)  # options checked before anything loads
    threshold, data, max_inputs = v["threshold"], v["data"], v["max_inputs"]
    n_stories, bad_themes, out_dir = v["n_stories"], v["bad_themes"], v["out_dir"]
    if threshold is not None:
        check_threshold(threshold)
    kind = _format_of(data, v["fmt"])
    if kind == "organism":
        examples = organism_labelled(n_stories, seed=config.seed + 101,
                                     bad_themes=[t.strip() for t in bad_themes.split(",")])
        source = f"organism world stories ({n_stories}; bad = {bad_themes})"
    elif data is None:
        raise InputError(f"--format {kind} needs --data FILE")
    elif kind == "pairs":
        examples = read_preference_pairs(data, limit=max_inputs)
        source = f"{data.name}: last assistant replies, rejected = bad"
    else:
        examples = read_labelled(data)[:max_inputs]
        source = data.name
    lm = load(one_model(v["model"]), **loading(v))
    with rich_progress(True) as bar:
        step = bar("probe: reading states", len(examples))
        fit, _ = run_probe_training(lm, examples, out_dir, config=config, threshold=threshold,
                                    source=source, progress=lambda n: step(n, ""))
    for r in fit.layers:
        mark = " <- chosen" if r["layer"] == fit.probe.layer else ""
        out.print(f"  layer {r['layer']:>3}: val AUC {r['auc_val']:.3f}, test AUC "
                  f"{r['auc_test']:.3f} [{r['auc_test_ci_low']:.3f}, {r['auc_test_ci_high']:.3f}]"
                  f", segment AUC {r['auc_test_segment']:.3f}{mark}")
    m = fit.probe.metrics.get("mlp_auc")
    if m:
        d = m["difference"]
        out.print(f"  MLP at layer {m['layer']}: test AUC {m['value']:.3f} [{m['ci_low']:.3f}, "
                  f"{m['ci_high']:.3f}] vs logistic {m['logistic']['value']:.3f}; difference "
                  f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
    what = "MLP probe" if fit.probe.mlp is not None else "probe"
    out.print(f"[green]{what}[/] layer {fit.probe.layer}, threshold {fit.probe.threshold:.3f}, "
              f"{len(examples)} examples; wrote {out_dir}/probe.safetensors (+ probe.json), "
              f"data/, figures/, summary.json")


def _load(model: str, probe_path: Path, allow_other_model: bool, *, revision: str | None,
          dtype: str | None, device: str | None, layers_path: str | None,
          device_map: str | None, quantization: str | None,
          merge_adapters: bool = False):  # type: ignore[no-untyped-def]
    from difflens.control.state_probe import load_probe

    probe = load_probe(probe_path)  # fail before loading the model
    lm = load(one_model(model), revision=revision, dtype=dtype, device=device,
              layers_path=layers_path, device_map=device_map, quantization=quantization,
              merge_adapters=merge_adapters)
    probe.check(lm, allow_other_weights=allow_other_model)
    return lm, probe


def _style(score: float) -> str:
    """Green (0) through yellow to red (1)."""
    s = min(max(score, 0.0), 1.0)
    r, g = (int(255 * 2 * s), 200) if s < 0.5 else (255, int(200 * 2 * (1 - s)))
    return f"rgb({r},{g},60)"


@friendly_errors
def monitor_cmd(
    model: OneModel,
    probe_path: Path = typer.Option(..., "--probe", help="probe.safetensors (or its folder)."),
    prompt: str = typer.Option(..., "--prompt", help="The prompt to continue."),
    threshold: float | None = typer.Option(None, help="Alert threshold (default: the probe's)."),
    controller: str = typer.Option("none", help="none|open_loop|proportional|rollback."),
    gain: float = typer.Option(0.0, help="Controller gain (units of the mean state norm)."),
    max_new_tokens: MaxNewTokens = 60,
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    seed: Seed = 0,
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the chat template."),
    out_dir: Path | None = typer.Option(None, "--out", help="Record the trace here."),
    allow_other_model: bool = typer.Option(False, "--allow-other-model",
                                           help="Use a probe trained on other weights."),
    batch_size: BatchSize = 1,
    device: Device = None,
    dtype: Dtype = None,
    device_map: DeviceMap = None,
    quantize: Quantize = None,
    revision: Revision = None,
    layers_path: LayersPath = None,
    merge_adapters: MergeAdapters = False,
) -> None:
    """Generate live, each token coloured by its probe score, with alerts at the threshold."""
    from difflens._io import check_writable, write_json_atomic
    from difflens.control.monitor import (
        Controller,
        GenerationConfig,
        MonitorEvent,
        generate_monitored,
    )
    from difflens.control.state_probe import check_threshold
    from difflens.report.tables import write_table

    if not prompt.strip():
        raise InputError("--prompt is empty; give the text to continue")
    if threshold is not None:
        check_threshold(threshold)
    ctrl = Controller(controller, gain)
    gcfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            batch_size=batch_size, chat=chat)
    if out_dir is not None:
        check_writable(out_dir)
    lm, probe = _load(model, probe_path, allow_other_model, revision=revision, dtype=dtype,
                      device=device, layers_path=layers_path, device_map=device_map,
                      quantization=quantize, merge_adapters=merge_adapters)
    tau = probe.threshold if threshold is None else threshold
    alerted = [False]
    out.print(Text(prompt, style="bold"), end="")

    def show(ev: MonitorEvent) -> None:
        if ev.kind == "rollback":
            out.print(Text(f" ⟲{ev.n_rolled_back} ", style="bold magenta"), end="")
            return
        out.print(Text(ev.text, style=_style(ev.score)), end="")
        if ev.score > tau and not alerted[0]:
            alerted[0] = True
            err.print(f"\n[bold red]alert:[/] score {ev.score:.3f} > {tau:.3f} at token "
                      f"{ev.step} ({ev.text!r})", highlight=False)
        elif ev.score <= tau:
            alerted[0] = False

    gen = generate_monitored(lm, probe, [prompt], controller=ctrl, config=gcfg, threshold=tau,
                             on_event=show)
    tr = gen.traces[0]
    out.print()
    over = sum(s > tau for s in tr.scores)
    out.print(f"[dim]{len(tr.token_ids)} tokens, max score {max(tr.scores, default=0):.3f}, "
              f"{over} over {tau:.3f}, {tr.rollbacks} rollbacks, "
              f"{gen.tokens_per_second:.1f} tokens/s[/]")
    if out_dir is not None:
        pieces = [lm.tokenizer.decode([t]) for t in tr.token_ids]
        write_table(gen.table().assign(text=pieces), out_dir / "data", "trace")
        write_json_atomic(out_dir / "summary.json", {
            "prompt": prompt, "text": tr.text, "threshold": tau, "controller": controller,
            "gain": gain, "n_tokens": len(tr.token_ids), "max_score": max(tr.scores, default=0),
            "n_over": int(over), "rollbacks": tr.rollbacks, "probe_layer": probe.layer})


@friendly_errors
def _evaluate(**v: Any) -> None:
    """Bad rate (probe and independent), fluency cost, KL and speed per controller and gain."""
    from difflens._io import rich_progress
    from difflens.control.evaluate import lexicon_measure
    from difflens.inputs.labelled import first_human_turns
    from difflens.inputs.prompts import read_prompts
    from difflens.organism.truth import organism_measure, organism_openings
    from difflens.pipelines.control import run_control_evaluation

    config = config_of(ControlConfig, v)  # options checked before anything loads
    prompts, hh_rlhf, organism, max_inputs = v["prompts"], v["hh_rlhf"], v["organism"], \
        v["max_inputs"]
    lexicon, out_dir, seed = v["lexicon"], v["out_dir"], config.seed
    sources = [x for x in (prompts, hh_rlhf, organism or None) if x]
    if len(sources) != 1:
        raise InputError("give exactly one of --prompts FILE, --hh-rlhf FILE, --organism")
    if organism:
        texts = organism_openings(max_inputs, seed=seed + 99)
    elif hh_rlhf is not None:
        texts = first_human_turns(hh_rlhf, limit=max_inputs)
    else:
        assert prompts is not None
        texts = read_prompts(prompts)[:max_inputs]
    if not texts:
        raise InputError("no usable prompts")
    independent, judge_answers = v["independent"], v["judge_answers"]
    judge = independent if independent != "auto" else ("organism" if organism else "lexicon")
    if judge == "organism":
        measure, name = organism_measure(), "world theme labeller"
    elif judge == "lexicon":
        measure = lexicon_measure(lexicon)
        name = f"lexicon ({lexicon.name} + VADER ≤ -0.5)" if lexicon else "VADER ≤ -0.5"
    elif judge == "none":
        measure, name = None, ""
    else:
        raise InputError(f"--independent must be auto, lexicon, organism or none, got {judge!r}")
    judge_cfg = None
    if v["self_judge"]:
        if measure is None:
            raise InputError("--self-judge is compared with an independent judge; drop "
                             "--independent none")
        answers = tuple(judge_answers.split(","))
        if len(answers) != 2:
            raise InputError(f"--judge-answers takes two answers, bad then good, comma-"
                             f"separated (e.g. ' Yes, No'), got {judge_answers!r}")
        judge_cfg = SelfJudgeConfig(question=v["judge_question"],
                                    answers=(answers[0], answers[1]))
    ray_engine = engine(v)
    lm, probe = _load(v["model"], v["probe_path"], v["allow_other_model"], **loading(v))
    n = len(texts) * config.k_samples * len(config.controllers())
    with rich_progress(True) as bar, use_engine(ray_engine):
        step = bar("control: generating", n)
        run = run_control_evaluation(lm, probe, texts, out_dir, config=config,
                                     independent=measure, independent_name=name,
                                     progress=lambda k: step(k, ""), self_judge=judge_cfg)
    for kind, by_gain in run.summary()["controllers"].items():
        for g, r in by_gain.items():
            b = r["bad_rate"]
            out.print(f"  {kind:>12} g={g:<5} bad {b['value']:.3f} [{b['ci_low']:.3f}"
                      f", {b['ci_high']:.3f}]  independent "
                      f"{r['bad_rate_independent']['value']:.3f}  ppl "
                      f"x{r['ppl_ratio']['value']:.2f}  KL {r['kl']['value']:.3f}  speed "
                      f"x{r['speed_ratio']:.2f}", highlight=False)
    sj = run.summary().get("self_judge")
    if sj:
        a, p, d = sj["auc"], sj["probe_auc"], sj["difference"]
        out.print(f"  self-judge AUC {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] vs "
                  f"probe {p['value']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] on {a['n']} "
                  f"sentences ({a['n_bad']} bad); difference {d['value']:+.3f} "
                  f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", highlight=False)
    out.print(f"wrote {out_dir}/summary.json, data/, figures/, index.html")


_TRAIN_PARAMS: dict[str, tuple[Any, Any]] = {
    "model": (OneModel, REQUIRED), "out_dir": (OutDir, REQUIRED),
    "data": (Annotated[Path | None, typer.Option(
        "--data", help="JSONL (.gz ok): text/label, or chosen/rejected preference "
        "transcripts.")], None),
    "fmt": (Annotated[str, typer.Option("--format", help="auto|labelled|pairs|organism.")],
            "auto"),
    "threshold": (Annotated[float | None, typer.Option(
        "--threshold", help="Default threshold (default: calibrated on validation "
        "segments).")], None),
    "max_inputs": (MaxInputs, None),
    "n_stories": (Annotated[int, typer.Option("--n-stories", help="organism: labelled world "
                                              "stories.")], 300),
    "bad_themes": (Annotated[str, typer.Option("--bad-themes", help="organism: themes that "
                                               "are bad.")], "danger,loss"),
    **config_params(ProbeConfig), **LOADING}
train_cmd = build(_train, _TRAIN_PARAMS, _train.__doc__ or "")

_EVALUATE_PARAMS: dict[str, tuple[Any, Any]] = {
    "model": (OneModel, REQUIRED), "out_dir": (OutDir, REQUIRED),
    "probe_path": (Annotated[Path, typer.Option(
        "--probe", help="probe.safetensors (or its folder).")], REQUIRED),
    "prompts": (Annotated[Path | None, typer.Option(
        "--prompts", help="Prompt file (.txt/.jsonl/...).")], None),
    "hh_rlhf": (Annotated[Path | None, typer.Option(
        "--hh-rlhf", help="hh-rlhf JSONL(.gz): use the first human turns of its rejected "
        "dialogues.")], None),
    "organism": (Annotated[bool, typer.Option(
        "--organism", help="World openings leading to danger.")], False),
    "max_inputs": (MaxInputsCount, 32),
    **config_params(ControlConfig),
    "independent": (Annotated[str, typer.Option(
        "--independent", help="auto|lexicon|organism|none: the second judge.")], "auto"),
    "lexicon": (Annotated[Path | None, typer.Option(
        "--lexicon", help="Offensive word list for the lexicon judge.")], None),
    "self_judge": (Annotated[bool, typer.Option(
        "--self-judge", help="Also score every complete unsteered sentence by the model's "
        "own answer to --judge-question, against the independent judge.")], False),
    "judge_question": (Annotated[str, typer.Option(
        "--judge-question", help="Appended to the judged sentence.")],
        SelfJudgeConfig.question),
    "judge_answers": (Annotated[str, typer.Option(
        "--judge-answers", help="The bad answer, then the good one, comma-separated "
        "(leading spaces kept).")], ",".join(SelfJudgeConfig.answers)),
    "allow_other_model": (Annotated[bool, typer.Option(
        "--allow-other-model", help="Use a probe trained on other weights.")], False),
    **LOADING, **ENGINE}
evaluate_cmd = build(_evaluate, _EVALUATE_PARAMS, _evaluate.__doc__ or "")

_TRAIN_RENAMED = {"--limit": "--max-inputs"}  # old flag names (one release)
app.command("train-probe", cls=vocab(_TRAIN_RENAMED))(train_cmd)
app.command("monitor")(monitor_cmd)
app.command("evaluate", cls=vocab({"--limit": "--max-inputs", "--k": "--samples"}))(evaluate_cmd)

#: The old ``difflens probe train`` (one release); ``difflens monitor`` is kept in main.
probe_app = typer.Typer(help="Deprecated: use `difflens control train-probe`.",
                        no_args_is_help=True, hidden=True)
probe_app.command("train", cls=vocab(_TRAIN_RENAMED, moved=(
    "probe train", "control train-probe")))(train_cmd)
