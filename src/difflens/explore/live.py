"""The explorer's live views: models loaded once at start, and what the typed-text token
diff, the multiverse tree and steer-and-monitor compute with them.

Nothing here has its own forward pass. Typed text goes through the capture path
(``forward_batch`` and
``next_token_stats``); trees come from
``probability_tree`` (a node is expanded by a one-level tree on
its path's text); every continuation comes from the one generation path,
``generate`` (through
``generate_monitored`` when a probe is chosen), steered by
``steering``'s scoped hook.

Concept vectors (``vectors.safetensors`` of ``difflens concepts``, at a run folder's top or
one folder down) and state probes (``probe.safetensors`` of ``difflens control
train-probe``) are found in the run folders given to the explorer. One lock keeps the
models to one request at a time, so a steering hook never acts on another request.

Every request is checked against ``LiveLimits``; a bad one is an ``InputError``
with one line that says what was expected.
"""

import dataclasses
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from difflens.errors import InputError
from difflens.explore.runs import Run
from difflens.inputs.tokens import format_token
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair, models_of

#: What a live view says when the explorer was started without models.
NO_MODELS = "no models loaded: start with --base/--tuned to use this view"
#: Tokens of context used to turn a token id into the text it adds.
_CONTEXT = 4


@dataclasses.dataclass(frozen=True)
class LiveLimits:
    """The largest request each live endpoint takes (the models run on this machine)."""

    max_chars: int = 2000
    """Characters of typed text or of a prompt."""
    max_tokens: int = 256
    """Tokens of typed text (also at most the model's context)."""
    max_top_k: int = 10
    """Top next tokens shown per position, and children per tree node."""
    max_depth: int = 5
    """Levels of a tree."""
    max_tree_nodes: int = 1500
    """Most nodes a tree may have (``top_k + top_k**2 + ... + top_k**depth``)."""
    max_path: int = 64
    """Tokens of a tree path below the prompt."""
    max_new_tokens: int = 64
    """Tokens of a continuation or a steered generation."""
    max_alpha: float = 1000.0
    """Largest steering multiplier, either sign."""
    max_gain: float = 100.0
    """Largest controller gain."""


@dataclasses.dataclass(frozen=True)
class VectorChoice:
    """One model's concept vectors in a ``vectors.safetensors`` of a run folder."""

    id: str
    """``RUN/PATH:LABEL``, what a request names."""
    label: str
    """The model (label in the file) whose vectors these are."""
    layers: tuple[int, ...]
    vectors: Any
    """The ``ConceptVectors`` of the file."""


@dataclasses.dataclass(frozen=True)
class ProbeChoice:
    """A state probe (``probe.safetensors``) of a run folder."""

    id: str
    """``RUN/probe.safetensors``."""
    layer: int
    threshold: float
    probe: Any
    """The ``StateProbe``."""


@dataclasses.dataclass(frozen=True)
class Live:
    """The loaded models and the vectors and probes found in the runs."""

    models: dict[str, LoadedModel]
    """``base`` and ``tuned``, or ``model`` alone."""
    vectors: tuple[VectorChoice, ...] = ()
    probes: tuple[ProbeChoice, ...] = ()
    problems: tuple[str, ...] = ()
    """Vector and probe files that could not be read, one line each."""
    limits: LiveLimits = LiveLimits()
    lock: Any = dataclasses.field(default_factory=threading.Lock, compare=False, repr=False)
    """Held while a request uses the models."""

    @property
    def tokenizer(self) -> Any:
        return next(iter(self.models.values())).tokenizer


def open_live(target: LoadedModel | ModelPair, runs: Sequence[Run] = (),
              limits: LiveLimits = LiveLimits()) -> Live:
    """The live state over ``target`` with the concept vectors and state probes of ``runs``
    (a file that cannot be read is listed in ``Live.problems``, not raised)."""
    from difflens.capture.concepts import load_vectors
    from difflens.control.state_probe import load_probe

    vectors: list[VectorChoice] = []
    probes: list[ProbeChoice] = []
    problems: list[str] = []
    for run in runs:
        for rel in _found(run, "vectors.safetensors"):
            path = run.file(rel)
            try:
                cv = load_vectors(path) if path is not None else None
            except InputError as exc:
                problems.append(f"{run.name}/{rel}: {exc}")
                continue
            if cv is not None:
                vectors += [VectorChoice(id=f"{run.name}/{rel}:{label}", label=label,
                                         layers=tuple(cv.layers), vectors=cv)
                            for label in cv.vectors]
        path = run.file("probe.safetensors")
        if path is not None:
            try:
                probe = load_probe(path)
            except InputError as exc:
                problems.append(f"{run.name}/probe.safetensors: {exc}")
                continue
            probes.append(ProbeChoice(id=f"{run.name}/probe.safetensors", layer=probe.layer,
                                      threshold=probe.threshold, probe=probe))
    return Live(models=models_of(target), vectors=tuple(vectors), probes=tuple(probes),
                problems=tuple(problems), limits=limits)


def _found(run: Run, name: str) -> list[str]:
    """``name`` at the run's top and in its direct subfolders (``concepts compare`` with
    several behaviours writes one folder each)."""
    out = [name] if run.file(name) is not None else []
    try:
        subs = sorted(p.name for p in run.root.iterdir() if p.is_dir()
                      and not p.name.startswith("."))
    except OSError:
        return out
    return out + [f"{s}/{name}" for s in subs if run.file(f"{s}/{name}") is not None]


def info(live: Live) -> dict[str, Any]:
    """What the pages offer: the models, statistics, vectors, probes and controllers."""
    from difflens.control.monitor import CONTROLLERS

    return {"models": {k: lm.identity.name for k, lm in live.models.items()},
            "statistics": statistics(list(live.models), [p.id for p in live.probes]),
            "vectors": [{"id": v.id, "label": v.label, "layers": list(v.layers)}
                        for v in live.vectors],
            "probes": [{"id": p.id, "layer": p.layer, "threshold": p.threshold}
                       for p in live.probes],
            "controllers": list(CONTROLLERS), "problems": list(live.problems),
            "limits": dataclasses.asdict(live.limits)}


def statistics(labels: Sequence[str], probes: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """The statistics typed text is coloured by: name -> ``{"label", "columns": {model:
    column}}``; KL and the log-prob difference read from each panel's model (a pair only);
    ``probe<j>``: the score of the ``j``-th state probe on each model's state at the token."""
    out: dict[str, dict[str, Any]] = {}
    if "base" in labels and "tuned" in labels:
        out["kl"] = {"label": "KL(model ‖ other), nats",
                     "columns": {"base": "kl_base_tuned", "tuned": "kl_tuned_base"}}
    out["entropy"] = {"label": "entropy, nats", "columns": {m: f"{m}_entropy" for m in labels}}
    out["logprob"] = {"label": "log-prob of the token",
                      "columns": {m: f"{m}_logprob" for m in labels}}
    if "base" in labels and "tuned" in labels:
        out["logprob_diff"] = {"label": "log-prob minus the other's",
                               "columns": {"base": "base_minus_tuned",
                                           "tuned": "tuned_minus_base"}}
    for j, pid in enumerate(probes):
        out[f"probe{j}"] = {"label": f"state probe score ({pid})",
                            "columns": {m: f"{m}_probe{j}" for m in labels}}
    return out


# -- request checking -----------------------------------------------------------------------


def text_field(body: Mapping[str, Any], key: str, max_chars: int) -> str:
    """A non-empty string of at most ``max_chars`` characters."""
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{key} must be a non-empty text, got {_shown(value)}")
    if len(value) > max_chars:
        raise InputError(f"{key} has {len(value)} characters, more than the {max_chars} this "
                         f"view takes; shorten it")
    return value


def int_field(body: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    """A whole number in ``[lo, hi]`` (``default`` when absent)."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{key} must be a whole number from {lo} to {hi}, got {_shown(value)}")
    if not lo <= value <= hi:
        raise InputError(f"{key} must be from {lo} to {hi}, got {value}")
    return value


def float_field(body: Mapping[str, Any], key: str, default: float, lo: float,
                hi: float) -> float:
    """A finite number in ``[lo, hi]`` (``default`` when absent)."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value):
        raise InputError(f"{key} must be a number from {lo:g} to {hi:g}, got {_shown(value)}")
    if not lo <= value <= hi:
        raise InputError(f"{key} must be from {lo:g} to {hi:g}, got {value:g}")
    return float(value)


def ids_field(body: Mapping[str, Any], key: str, vocab: int, max_len: int) -> list[int]:
    """A list of at most ``max_len`` token ids below ``vocab``."""
    value = body.get(key, [])
    if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in value):
        raise InputError(f"{key} must be a list of token ids (0 to {vocab - 1}), got "
                         f"{_shown(value)}")
    if len(value) > max_len:
        raise InputError(f"{key} has {len(value)} tokens, more than {max_len}; start a new "
                         f"tree from a longer prompt")
    return list(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _model(live: Live, label: Any) -> LoadedModel:
    if label not in live.models:
        raise InputError(f"model must be one of {', '.join(live.models)}, got {_shown(label)}")
    return live.models[label]


# -- token texts ----------------------------------------------------------------------------


def piece(tokenizer: Any, before: Sequence[int], token: int) -> str:
    """The text ``token`` adds after the ids ``before`` (decoding a lone token would drop
    SentencePiece's leading space); a special token, or one that holds only part of a
    character, is its token string as ``format_token`` shows
    it (as in the stored runs' views)."""
    ctx = list(before[-_CONTEXT:])
    said = tokenizer.decode(ctx, skip_special_tokens=True)
    text = tokenizer.decode(ctx + [token], skip_special_tokens=True)
    out = text[len(said):] if text.startswith(said) else tokenizer.decode([token])
    if out and "\ufffd" not in out:
        return str(out)
    return format_token(str(tokenizer.convert_ids_to_tokens(token)))


def _text_after(tokenizer: Any, before: Sequence[int], ids: Sequence[int]) -> str:
    """The text the token ids ``ids`` add after the ids ``before``, decoded together."""
    said = tokenizer.decode(list(before), skip_special_tokens=True)
    text = tokenizer.decode(list(before) + list(ids), skip_special_tokens=True)
    return str(text[len(said):] if text.startswith(said)
               else tokenizer.decode(list(ids), skip_special_tokens=True))


def _top(tokenizer: Any, before: Sequence[int], ids: torch.Tensor,
         logprobs: torch.Tensor) -> list[dict[str, Any]]:
    out = []
    for t, lp in zip(ids.tolist(), logprobs.tolist(), strict=True):
        text = piece(tokenizer, before, int(t))
        out.append({"token_id": int(t), "text": text, "shown": format_token(text, quoted=True),
                    "prob": float(math.exp(lp))})
    return out


# -- typed text -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScoredText:
    """Typed text scored by every model, token by token.

    ``tokens[i]`` is the ``i``-th token with the statistics of the distribution that
    predicted it (columns as in a divergence run: ``base_entropy``, ``base_logprob``,
    ``kl_tuned_base``, ...; ``None`` for a first token nothing predicts) and ``top``: each
    model's ``top_k`` tokens of that distribution. ``next`` is the distribution after the
    last token (``top`` and entropies only).
    """

    models: list[str]
    tokens: list[dict[str, Any]]
    next: dict[str, Any]
    n_tokens: int


def score_text(live: Live, text: str, top_k: int = 5) -> ScoredText:
    """Score ``text`` with every model through the capture path (one forward pass each)."""
    from difflens.capture.engine import forward_batch
    from difflens.capture.stats import next_token_stats

    lim = live.limits
    if not text.strip() or len(text) > lim.max_chars:
        raise InputError(f"text must have 1 to {lim.max_chars} characters, got {len(text)}")
    if not 1 <= top_k <= lim.max_top_k:
        raise InputError(f"top_k must be from 1 to {lim.max_top_k}, got {top_k}")
    tok = live.tokenizer
    ids = [int(i) for i in tok(text, add_special_tokens=True)["input_ids"]]
    most = min([lim.max_tokens] + [lm.max_length or lim.max_tokens
                                   for lm in live.models.values()])
    if not ids:
        raise InputError("the text tokenizes to nothing; type some words")
    if len(ids) > most:
        raise InputError(f"the text has {len(ids)} tokens, more than the {most} this view "
                         f"takes; shorten it")
    layers = sorted({p.layer for p in live.probes})
    with live.lock:
        outs = {m: forward_batch(lm, [ids], layers) for m, lm in live.models.items()}
    logits = {m: o.logits[0, :len(ids)] for m, o in outs.items()}
    # each probe's score of every model's state at each token (the state after reading it)
    scores = {(m, j): p.probe.score(o.hidden[p.layer][0, :len(ids)]).cpu()
              for m, o in outs.items() for j, p in enumerate(live.probes)}
    next_ids = torch.tensor(ids[1:] + [-1], dtype=torch.long)
    per_model, pair = next_token_stats(logits, next_ids, top_k)
    special = set(getattr(tok, "all_special_ids", []))
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(ids):
        if i == 0 and t in special:
            continue  # <bos>: nothing to show
        row: dict[str, Any] = {"t": i, "token_id": t, "text": piece(tok, ids[:i], t),
                               "top": {}}
        for m, st in per_model.items():
            row[f"{m}_entropy"] = _num(st.entropy[i - 1]) if i else None
            row[f"{m}_logprob"] = _num(st.logprob_next[i - 1]) if i else None
            row["top"][m] = (_top(tok, ids[:i], st.topk_ids[i - 1], st.topk_logprobs[i - 1])
                             if i else [])
        for (m, j), sc in scores.items():
            row[f"{m}_probe{j}"] = _num(sc[i])
        if pair is not None:
            row["kl_tuned_base"] = _num(pair.kl_tuned_base[i - 1]) if i else None
            row["kl_base_tuned"] = _num(pair.kl_base_tuned[i - 1]) if i else None
            b, tu = row["base_logprob"], row["tuned_logprob"]
            row["tuned_minus_base"] = None if b is None else tu - b
            row["base_minus_tuned"] = None if b is None else b - tu
        rows.append(row)
    last = len(ids) - 1
    nxt: dict[str, Any] = {"top": {m: _top(tok, ids, st.topk_ids[last], st.topk_logprobs[last])
                                   for m, st in per_model.items()}}
    for m, st in per_model.items():
        nxt[f"{m}_entropy"] = _num(st.entropy[last])
    if pair is not None:
        nxt["kl_tuned_base"] = _num(pair.kl_tuned_base[last])
        nxt["kl_base_tuned"] = _num(pair.kl_base_tuned[last])
    return ScoredText(models=list(live.models), tokens=rows, next=nxt, n_tokens=len(ids))


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


# -- the multiverse -------------------------------------------------------------------------


def check_tree_size(depth: int, top_k: int, limits: LiveLimits) -> None:
    """Refuse trees that could grow past ``limits.max_tree_nodes``."""
    if not 1 <= depth <= limits.max_depth:
        raise InputError(f"depth must be from 1 to {limits.max_depth}, got {depth}")
    if not 1 <= top_k <= limits.max_top_k:
        raise InputError(f"top_k must be from 1 to {limits.max_top_k}, got {top_k}")
    nodes = sum(top_k ** level for level in range(1, depth + 1))
    if nodes > limits.max_tree_nodes:
        raise InputError(f"depth {depth} with top_k {top_k} may grow {nodes} nodes, more than "
                         f"{limits.max_tree_nodes}; lower the depth or top_k and expand "
                         f"nodes by clicking them")


def trees(live: Live, prompt: str, *, depth: int = 2, top_k: int = 3,
          min_prob: float = 1e-3) -> dict[str, Any]:
    """Each model's ``probability_tree`` of ``prompt``, with
    the prompt's token ids (a node is named by the ids of its path below them)."""
    from difflens.sampling.tree import probability_tree

    check_tree_size(depth, top_k, live.limits)
    if not 0.0 <= min_prob < 1.0:
        raise InputError(f"min_prob must be in [0, 1), got {min_prob}")
    ids = _prompt_ids(live, prompt)
    with live.lock:
        out = {m: _with_paths(probability_tree(lm, prompt, depth=depth, top_k=top_k,
                                               min_prob=min_prob).to_dict()["root"], [])
               for m, lm in live.models.items()}
    return {"prompt": prompt, "prompt_ids": ids, "depth": depth, "top_k": top_k,
            "trees": out}


def _with_paths(node: dict[str, Any], path: list[int]) -> dict[str, Any]:
    """A tree node's dict with ``path``: the token ids from the prompt to it, and (below
    the root, the prompt) ``shown``: its token as
    ``format_token`` quotes it."""
    node["path"] = path
    if path:
        node["shown"] = format_token(str(node["text"]), quoted=True)
    for c in node["children"]:
        _with_paths(c, path + [c["token_id"]])
    return node


def _prompt_ids(live: Live, prompt: str) -> list[int]:
    if not prompt.strip() or len(prompt) > live.limits.max_chars:
        raise InputError(f"prompt must have 1 to {live.limits.max_chars} characters, got "
                         f"{len(prompt)}")
    ids = [int(i) for i in live.tokenizer(prompt, add_special_tokens=True)["input_ids"]]
    if not ids:
        raise InputError("the prompt tokenizes to nothing; type some words")
    return ids


def path_text(live: Live, prompt: str, path: Sequence[int]) -> str:
    """``prompt`` followed by the text the tokens of ``path`` add."""
    ids = _prompt_ids(live, prompt)
    tok = live.tokenizer
    said = tok.decode(ids)
    text = tok.decode(ids + list(path))
    return prompt + (text[len(said):] if text.startswith(said)
                     else tok.decode(list(path)))


def expand(live: Live, model: str, prompt: str, path: Sequence[int], *,
           top_k: int = 3) -> dict[str, Any]:
    """The ``top_k`` children of the node at ``path``: a one-level
    ``probability_tree`` of the path's text (``exact`` says
    whether that text tokenizes back to the path; when not, the children are those of its
    re-tokenized form)."""
    from difflens.sampling.tree import probability_tree

    lm = _model(live, model)
    check_tree_size(1, top_k, live.limits)
    ids = _prompt_ids(live, prompt)
    if len(path) > live.limits.max_path:
        raise InputError(f"path has {len(path)} tokens, more than {live.limits.max_path}")
    text = path_text(live, prompt, path)
    exact = [int(i) for i in live.tokenizer(text, add_special_tokens=True)["input_ids"]] \
        == ids + list(path)
    with live.lock:
        tree = probability_tree(lm, text, depth=1, top_k=top_k, min_prob=0.0)
    children = [_with_paths(c.to_dict(), list(path) + [c.token_id])
                for c in tree.root.children]
    return {"model": model, "path": list(path), "text": text, "exact": exact,
            "children": children}


def continue_branch(live: Live, prompt: str, path: Sequence[int], *,
                    max_new_tokens: int = 20) -> dict[str, Any]:
    """Every model's greedy continuation of the branch ``prompt`` + ``path`` (the loom),
    from ``generate`` on the exact token ids."""
    from difflens.sampling.generate import GenerationConfig, generate

    lim = live.limits
    if not 1 <= max_new_tokens <= lim.max_new_tokens:
        raise InputError(f"max_new_tokens must be from 1 to {lim.max_new_tokens}, got "
                         f"{max_new_tokens}")
    if len(path) > lim.max_path:
        raise InputError(f"path has {len(path)} tokens, more than {lim.max_path}")
    ids = _prompt_ids(live, prompt) + list(path)
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=1)
    tok = live.tokenizer
    out: dict[str, Any] = {}
    with live.lock:
        for m, lm in live.models.items():
            new = generate(lm, [ids], config).token_ids[0]
            out[m] = {"token_ids": new, "text": _text_after(tok, ids, new)}
    return {"branch": path_text(live, prompt, path), "path": list(path),
            "continuations": out}


# -- steer and monitor ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SteerRequest:
    """One steer-and-monitor request (checked by ``steer_request``)."""

    prompt: str
    vector: str | None = None
    """A ``VectorChoice.id``, or None for no steering vector."""
    layer: int | None = None
    """Layer to steer at (default: the middle one of the vector's layers)."""
    alpha: float = 0.0
    probe: str | None = None
    """A ``ProbeChoice.id``, or None for no probe."""
    controller: str = "none"
    gain: float = 0.0
    max_new_tokens: int = 20


def steer_request(live: Live, body: Mapping[str, Any]) -> SteerRequest:
    """A ``SteerRequest`` from a request body, or an ``InputError``."""
    from difflens.control.monitor import CONTROLLERS

    lim = live.limits
    vector = body.get("vector") or None
    if vector is not None and vector not in {v.id for v in live.vectors}:
        raise InputError(f"vector must be one of the concept vectors found in the runs "
                         f"({len(live.vectors)}), got {_shown(vector)}; give a concepts run "
                         f"folder to difflens explore")
    probe = body.get("probe") or None
    if probe is not None and probe not in {p.id for p in live.probes}:
        raise InputError(f"probe must be one of the probes found in the runs "
                         f"({len(live.probes)}), got {_shown(probe)}; give a `difflens control "
                         f"train-probe` folder to difflens explore")
    controller = body.get("controller", "none")
    if controller not in CONTROLLERS:
        raise InputError(f"controller must be one of {', '.join(CONTROLLERS)}, got "
                         f"{_shown(controller)}")
    if controller != "none" and probe is None:
        raise InputError("a controller needs a probe (its score and direction); choose one")
    layer = body.get("layer")
    if layer is not None:
        layer = int_field(body, "layer", 0, 0, 10_000)
    return SteerRequest(
        prompt=text_field(body, "prompt", lim.max_chars), vector=vector, layer=layer,
        alpha=float_field(body, "alpha", 0.0, -lim.max_alpha, lim.max_alpha), probe=probe,
        controller=controller, gain=float_field(body, "gain", 0.0, 0.0, lim.max_gain),
        max_new_tokens=int_field(body, "max_new_tokens", 20, 1, lim.max_new_tokens))


def steer(live: Live, req: SteerRequest) -> dict[str, Any]:
    """Greedy generations of every model from ``req.prompt``: plain (no vector, no
    controller) and steered (``alpha`` times the vector at its layer, and the controller),
    each token with the probe's score when a probe is chosen.

    Returns ``{"layer", "notes", "models": {model: {"plain", "steered"}}}``; a generation
    is ``{"text", "tokens": [{"token_id", "text", "score", "coef"}]}``.
    """
    from difflens.control.monitor import Controller, generate_monitored
    from difflens.control.steering import steering
    from difflens.sampling.generate import GenerationConfig, encode_prompts, generate

    choice = next((v for v in live.vectors if v.id == req.vector), None)
    probe = next((p.probe for p in live.probes if p.id == req.probe), None)
    layer = req.layer
    vectors: dict[int, torch.Tensor] = {}
    if choice is not None:
        if layer is None:
            layer = choice.layers[len(choice.layers) // 2]
        if layer not in choice.layers:
            raise InputError(f"layer must be one of the vector's layers "
                             f"{list(choice.layers)}, got {layer}")
        vectors = {layer: choice.vectors.layer(choice.label, layer)}
    config = GenerationConfig(max_new_tokens=req.max_new_tokens, temperature=0.0, batch_size=1)
    controller = Controller(req.controller, req.gain)
    tok = live.tokenizer
    notes: list[str] = []
    out: dict[str, Any] = {}
    with live.lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m, lm in live.models.items():
            if vectors and next(iter(vectors.values())).shape[0] != lm.d_model:
                raise InputError(f"the vector has {next(iter(vectors.values())).shape[0]} "
                                 f"entries but {lm.identity.name} has d_model {lm.d_model}; "
                                 f"pick a vector of this model")
            prompt_ids = encode_prompts(lm, [req.prompt], False)[0]
            runs: dict[str, Any] = {}
            for kind, ctrl, alpha in (("plain", Controller(), 0.0),
                                      ("steered", controller, req.alpha)):
                with steering(lm, vectors if kind == "steered" else {}, alpha):
                    if probe is None:
                        ids = generate(lm, [prompt_ids], config).token_ids[0]
                        scores: list[float | None] = [None] * len(ids)
                        coefs = [0.0] * len(ids)
                    else:
                        tr = generate_monitored(lm, probe, [req.prompt], controller=ctrl,
                                                config=config).traces[0]
                        ids, scores, coefs = tr.token_ids, list(tr.scores), tr.coefs
                runs[kind] = {
                    "text": tok.decode(ids, skip_special_tokens=True),
                    "tokens": [{"token_id": t, "text": piece(tok, prompt_ids + ids[:i], t),
                                "score": s, "coef": c}
                               for i, (t, s, c) in enumerate(zip(ids, scores, coefs,
                                                                 strict=True))]}
            out[m] = runs
    for w in caught:
        line = str(w.message)
        if line not in notes:
            notes.append(line)
    return {"prompt": req.prompt, "layer": layer, "alpha": req.alpha, "vector": req.vector,
            "probe": req.probe, "threshold": None if probe is None else probe.threshold,
            "controller": req.controller, "gain": req.gain, "notes": notes, "models": out}

