"""``difflens discover``: what a fine-tune changed, without being told where to look."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from difflens.cli._common import OutDir
from difflens.cli._options import (
    LOADING,
    MODELS,
    REQUIRED,
    build,
    config_of,
    config_params,
    load_models,
)

out = Console()


def _discover(**v: Any) -> None:
    """Find what the tuned model (or each stage of a lineage) changed: the Activation
    Difference Lens, diff mining, logit-difference amplification and a log-odds baseline,
    on unrelated texts (built in, or --texts); writes summary.json (discover.<method>.top_words,
    discover.hypothesis), data/, figures/ and index.html."""
    from difflens.pipelines.discover import DiscoverConfig, read_texts, run_discover

    config = config_of(DiscoverConfig, v)  # options and files checked before anything loads
    texts = read_texts(v["texts"]) if v["texts"] else None
    finetune = read_texts(v["finetune_texts"]) if v["finetune_texts"] else None
    planted = _planted(v["planted_words"]) if v["planted_words"] else None
    target = load_models(v)
    res = run_discover(target, v["out_dir"], config, texts=texts, finetune_texts=finetune,
                       planted=planted, progress=True)
    d = res.summary()["discover"]
    for m in ("adl", "mining", "amplify", "logodds"):
        if m in d:
            words = ", ".join(d[m]["top_words"][:10]) or d[m].get("note", "nothing")
            out.print(f"{m}: {words}", highlight=False)
    if "planted" in d:
        out.print("planted share of the top words: " + ", ".join(
            f"{m} {x:.2f}" for m, x in d["planted"]["share"].items() if x == x),
            highlight=False)
    hyp = d["hypothesis"]
    out.print(f"hypothesis: {', '.join(hyp['words']) or '-'} ({hyp['note']})", highlight=False)
    out.print(f"wrote {v['out_dir']}/summary.json, data/, figures/, index.html")


def _planted(text: str) -> list[str]:
    """Planted words: a file (one a line, or a zoo organism's ``finetune.json`` with
    ``planted_words``) or a comma-separated list."""
    import json

    from difflens.errors import InputError

    path = Path(text)
    if path.is_file():
        if path.suffix == ".json":
            words = json.loads(path.read_text()).get("planted_words") or []
        else:
            words = [w.strip() for w in path.read_text().splitlines()]
    else:
        words = text.split(",")
    words = [w.strip().lower() for w in words if w.strip()]
    if not words:
        raise InputError(f"--planted-words {text!r}: no words; give a comma-separated list, a "
                         f"file with one word a line, or a JSON file with 'planted_words'")
    return words


def _params() -> dict[str, tuple[Any, Any]]:
    from difflens.pipelines.discover import DiscoverConfig

    return {
        **MODELS, "out_dir": (OutDir, REQUIRED),
        "texts": (Annotated[Path | None, typer.Option(
            "--texts", help="Your unrelated texts (.txt one a line, or .jsonl with 'text'); "
                            "default: the built-in ones.")], None),
        "finetune_texts": (Annotated[Path | None, typer.Option(
            "--finetune-texts", help="The fine-tuning texts, when known: the causal check and "
                                     "steered-text similarity use them.")], None),
        "planted_words": (Annotated[str | None, typer.Option(
            "--planted-words", help="Words a known objective planted (comma-separated, a file "
                                    "one a line, or a JSON with planted_words): each method's "
                                    "share of them is reported.")], None),
        **config_params(DiscoverConfig), **LOADING}


discover_cmd = build(_discover, _params(), _discover.__doc__ or "")
