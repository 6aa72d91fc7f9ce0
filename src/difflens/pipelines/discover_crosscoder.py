"""``discover``'s dictionary methods (opt-in: ``--methods ...,crosscoder,diff_sae``).

- ``crosscoder``: a BatchTopK crosscoder (``analysis.crosscoder``) trained on both models'
  per-token states at the ADL's layer (``--layer``, default the middle) over the texts and
  the fine-tuning texts when given (``capture.paired_states``: shards under
  ``OUT/crosscoder_states``). Latents are classed by relative decoder norm (only those that
  fired on these tokens are counted), the tuned-only ones go through Latent Scaling (those
  whose base share ``nu`` is 0.2 or more are removed and counted), and the survivors are
  ranked by their total activation on the fine-tuning texts' tokens (on all tokens when no
  fine-tuning texts are given).
- ``diff_sae``: the paper's baseline, a BatchTopK SAE on ``h_tuned - h_base`` of the same
  tokens; no classes apply, so every latent that fired is ranked by the same rule.

For each of the ``TOP_LATENTS`` first latents: its tuned decoder (the SAE's decoder) read
through the tuned model's logit lens, the tokens it is most active on (summed activation),
and the texts where it is most active, with the activation at every token. ``top_words``:
each latent's lens words and token words scored ``1/(1+latent rank) * 1/(1+word rank)``,
summed, best first. Training checkpoints under ``OUT/<method>/checkpoint-<key>`` (the key
hashes the capture and the config), so a killed run resumes where it stopped.
"""

import dataclasses
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from difflens._io import fingerprint
from difflens.analysis import discover as D
from difflens.analysis.crosscoder import (
    NU_SURVIVES_BELOW,
    Crosscoder,
    CrosscoderConfig,
    CrosscoderResult,
    latent_classes,
    latent_scaling,
    train_crosscoder,
    train_diff_sae,
)
from difflens.capture.activation_diff import logit_lens
from difflens.capture.paired_states import PairedStates, StateRows, capture_paired_states
from difflens.pipelines.discover_steps import Pair, complete_words, ranked_words

#: The dictionary methods, in the order they run.
DICTIONARY_METHODS: tuple[str, ...] = ("crosscoder", "diff_sae")
EXPANSION = 8
"""Latents per ``d_model`` (the crosscoder module's default for small models)."""
K_RANGE = (4, 64)
"""BatchTopK's ``k`` is ``d_model // 4`` clamped to this range (32 at d_model 128)."""
BATCH_TOKENS = 256
"""Tokens per training step (fewer when the capture holds fewer)."""
LR = 1e-3
WARMUP_STEPS = 100
"""Warm-up steps, at most a tenth of the run."""
CHECKPOINT_EVERY = 200
TOP_LATENTS = 10
"""Latents described (examples, lens, tokens) and scored into ``top_words``."""
EXAMPLES = 3
"""Max-activating texts shown per latent."""
WORDS_PER_LATENT = 10
"""Lens words and token words kept per latent."""


def crosscoder_config(d_model: int, n_tokens: int, token_budget: int, seed: int
                      ) -> CrosscoderConfig:
    """The ``CrosscoderConfig`` a discover run trains with: ``EXPANSION`` x ``d_model``
    latents, ``k = d_model // 4`` in ``K_RANGE``, ``BATCH_TOKENS`` a step, ``LR``,
    ``token_budget`` tokens (whole steps), a latent dead after a whole pass over the capture
    without firing (or a tenth of the run, whichever is longer), warm-up ``WARMUP_STEPS``
    (at most a tenth of the steps)."""
    batch = max(1, min(BATCH_TOKENS, n_tokens))
    steps = max(1, token_budget // batch)
    return CrosscoderConfig(expansion=EXPANSION, k=min(max(d_model // 4, K_RANGE[0]),
                                                       K_RANGE[1]),
                            dead_tokens=max(n_tokens, steps * batch // 10), lr=LR,
                            warmup_steps=min(WARMUP_STEPS, steps // 10), batch_size=batch,
                            token_budget=steps * batch, seed=seed,
                            checkpoint_every=CHECKPOINT_EVERY)


def _inputs(method: str, model: Crosscoder, rows: StateRows) -> torch.Tensor:
    """``encode``'s input for a batch of rows: both streams, or their difference."""
    if method == "diff_sae":
        return model.normalise([rows.tuned - rows.base])
    return model.normalise([rows.base, rows.tuned])


def _decoders(method: str, model: Crosscoder, latents: np.ndarray) -> torch.Tensor:
    """The latents' tuned decoder (the SAE's decoder) in the models' own units."""
    stream = 0 if method == "diff_sae" else 1
    idx = torch.as_tensor(latents, dtype=torch.long)
    return model.W_dec.detach()[idx, stream] / model.scales[stream]


@torch.no_grad()
def _activity(method: str, model: Crosscoder, states: PairedStates, n_plain: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per latent: tokens it fired on, its total activation, and its total on the
    fine-tuning texts' tokens (texts from ``n_plain`` on)."""
    m = model.W_dec.shape[0]
    count, total, tuned_on = (np.zeros(m, dtype=np.int64), np.zeros(m), np.zeros(m))
    for rows in states.batches():
        f = model.encode(_inputs(method, model, rows)).double()
        count += (f > 0).sum(0).numpy()
        total += f.sum(0).numpy()
        total_ft = f[rows.text >= n_plain].sum(0).numpy()
        tuned_on += total_ft
    return count, total, tuned_on


@torch.no_grad()
def _where(method: str, model: Crosscoder, states: PairedStates, top: np.ndarray,
           vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """``(max activation per text and latent, summed activation per latent and token)``."""
    best = np.zeros((states.n_texts, len(top)))
    by_token = np.zeros((len(top), vocab))
    idx = torch.as_tensor(top, dtype=torch.long)
    for rows in states.batches():
        f = model.encode(_inputs(method, model, rows))[:, idx].double().numpy()
        text, tok = rows.text.numpy(), rows.token.numpy()
        np.maximum.at(best, text, f)
        for j in range(len(top)):
            np.add.at(by_token[j], tok, f[:, j])
    return best, by_token


@torch.no_grad()
def _token_rows(method: str, model: Crosscoder, states: PairedStates, top: np.ndarray,
                texts: set[int]) -> dict[int, list[tuple[int, int, np.ndarray]]]:
    """Per text of ``texts``: ``(position, token, activations of top)`` of every token."""
    out: dict[int, list[tuple[int, int, np.ndarray]]] = {t: [] for t in texts}
    idx = torch.as_tensor(top, dtype=torch.long)
    for rows in states.batches():
        keep = np.isin(rows.text.numpy(), sorted(texts))
        if not keep.any():
            continue
        sel = torch.from_numpy(np.flatnonzero(keep))
        part = StateRows(*(getattr(rows, f.name)[sel] for f in dataclasses.fields(StateRows)))
        f = model.encode(_inputs(method, model, part))[:, idx].double().numpy()
        for i in range(len(sel)):
            out[int(part.text[i])].append((int(part.position[i]), int(part.token[i]), f[i]))
    return out


def _read(p: Pair, method: str, res: CrosscoderResult, states: PairedStates, layer: int,
          texts: list[str], checkpoint: str) -> dict[str, Any]:
    """The method's summary section; its tables go to ``p.frames``."""
    c, model = p.config, res.model
    n_plain = len(p.texts)
    count, total, on_ft = _activity(method, model, states, n_plain)
    fired = count > 0
    m = len(count)
    labels = np.full(m, "", dtype="<U10")
    delta = np.full(m, np.nan)
    nu_r, nu_e, survives = np.full(m, np.nan), np.full(m, np.nan), np.zeros(m, dtype=bool)
    out: dict[str, Any] = {"layer": layer}
    if method == "crosscoder":
        cls = latent_classes(model)
        labels, delta = cls.labels, cls.delta
        out["classes"] = {k: int(((labels == k) & fired).sum())
                          for k in ("tuned-only", "base-only", "shared", "other")}
        tuned_only = np.flatnonzero((labels == "tuned-only") & fired)
        if len(tuned_only):
            sc = latent_scaling(model, ([r.base, r.tuned] for r in states.batches()),
                                tuned_only)
            nu_r[tuned_only], nu_e[tuned_only] = sc.nu_reconstruction, sc.nu_error
            survives[tuned_only] = sc.survives
        candidates = np.flatnonzero(survives)
        out["removed_by_scaling"] = int(len(tuned_only) - len(candidates))
        out["scaling_rule"] = (f"a tuned-only latent is kept when both Latent Scaling "
                               f"ratios (nu) are below {NU_SURVIVES_BELOW:g}")
    else:
        candidates = np.flatnonzero(fired)
    score = on_ft if p.finetune else total
    order = candidates[np.lexsort((candidates, -score[candidates]))]
    top = order[score[order] > 0][:TOP_LATENTS]
    rank = np.full(m, -1)
    rank[order] = np.arange(len(order))
    vocab = int(p.tuned.model.get_output_embeddings().weight.shape[0])
    best, by_token = _where(method, model, states, top, vocab)
    shown = {j: [int(t) for t in np.argsort(-best[:, j], kind="stable")[:EXAMPLES]
                 if best[t, j] > 0] for j in range(len(top))}
    per_text = _token_rows(method, model, states, top, {t for v in shown.values() for t in v})
    lens = (logit_lens(p.tuned, _decoders(method, model, top), layer).numpy()
            if len(top) else np.zeros((0, vocab)))
    decode = p.tuned.tokenizer.convert_ids_to_tokens
    norms = model.decoder_norms().numpy()
    score_words: dict[str, float] = {}
    records, example_rows = [], []
    for j, latent in enumerate(top.tolist()):
        lens_words = [w for w, _ in ranked_words(p, lens[j], WORDS_PER_LATENT)]
        tok_order = np.argsort(-by_token[j], kind="stable")
        tok_order = tok_order[by_token[j][tok_order] > 0][:10 * WORDS_PER_LATENT + 100]
        completed = complete_words(p, tok_order.tolist())
        token_words = [w for w, _ in D.dedupe_words([completed[int(t)] for t in tok_order],
                                                    by_token[j][tok_order], WORDS_PER_LATENT)]
        for ws in (lens_words, token_words):
            for r, w in enumerate(ws):
                score_words[w] = score_words.get(w, 0.0) + 1 / (1 + j) / (1 + r)
        examples = []
        for t in shown[j]:
            toks = sorted(per_text[t])
            acts = [float(a[j]) for _, _, a in toks]
            examples.append({"text": t, "source": "texts" if t < n_plain else "finetune",
                             "max": float(best[t, j]),
                             "tokens": [str(x) for x in decode([k for _, k, _ in toks])],
                             "positions": [q for q, _, _ in toks], "activations": acts})
            example_rows += [{"latent": latent, "rank": j, "text": t, "position": q,
                              "token": k, "token_text": str(decode(k)), "activation": float(a[j])}
                             for q, k, a in toks]
        records.append({"latent": latent, "rank": j, "score": float(score[latent]),
                        "fired": int(count[latent]),
                        "frequency": float(count[latent]) / states.n_tokens,
                        "activation_total": float(total[latent]),
                        "activation_finetune": float(on_ft[latent]),
                        "decoder_norms": [float(x) for x in norms[latent]],
                        **({"delta": float(delta[latent]), "nu_reconstruction":
                            float(nu_r[latent]), "nu_error": float(nu_e[latent])}
                           if method == "crosscoder" else {}),
                        "lens_words": lens_words, "token_words": token_words,
                        "examples": examples})
    lens_all = {int(latent): " ".join(r["lens_words"]) for latent, r in zip(top, records,
                                                                              strict=True)}
    rows = np.flatnonzero(fired)
    p.frames[f"{method}_latents"] = pd.DataFrame({
        "latent": rows, "class": labels[rows] if method == "crosscoder" else "",
        "delta": delta[rows], "fired": count[rows], "frequency": count[rows] / states.n_tokens,
        "activation_total": total[rows], "activation_finetune": on_ft[rows],
        "nu_reconstruction": nu_r[rows], "nu_error": nu_e[rows],
        "kept": np.isin(rows, candidates), "rank": rank[rows],
        "lens_words": [lens_all.get(int(r), "") for r in rows]})
    p.frames[f"{method}_examples"] = pd.DataFrame(
        example_rows, columns=["latent", "rank", "text", "position", "token", "token_text",
                               "activation"])
    ve = res.variance_explained
    top_words = sorted(score_words, key=lambda w: (-score_words[w], w))[:c.n_words]
    out |= {
        "top_words": top_words,
        "variance_explained": (dict(zip(("base", "tuned"), ve, strict=True))
                               if method == "crosscoder" else {"difference": ve[0]}),
        "scored_on": res.scored_on, "l0": res.l0, "dead": res.dead,
        "n_latents": m, "fired": int(fired.sum()), "kept": len(candidates),
        "n_tokens": states.n_tokens, "n_texts": len(texts), "n_finetune_texts": len(texts)
        - n_plain, "steps": res.config.steps, "final_loss": res.losses[-1],
        "config": dataclasses.asdict(res.config), "checkpoint": checkpoint,
        "rank_rule": ("total activation on the fine-tuning texts' tokens" if p.finetune
                      else "total activation on all tokens (no fine-tuning texts)"),
        "words_rule": "each described latent's lens and token words scored 1/(1+latent "
                      "rank) x 1/(1+word rank), summed",
        "latents": records,
        **({} if top_words else {"note": "no kept latent fired on these texts"}),
    }
    return out


def run_dictionaries(p: Pair, summary: dict[str, Any], out: Path | None = None) -> None:
    """Run the dictionary methods in ``p.config.methods`` (see the module docstring),
    writing ``summary["crosscoder"]`` / ``summary["diff_sae"]`` and their tables; the
    capture and the checkpoints go under ``out`` (a temporary folder when None)."""
    c = p.config
    methods = [m for m in DICTIONARY_METHODS if m in c.methods]
    if not methods:
        return
    layer = (p.tuned.layers.normalize(c.layer) if c.layer is not None
             else p.tuned.n_layers // 2)
    texts = list(p.texts) + list(p.finetune or [])
    with ExitStack() as stack:
        root = out if out is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory()))
        tick = p.bar("dictionaries: paired states", len(texts))
        states = capture_paired_states(p.base, p.tuned, texts, layer,
                                       root / "crosscoder_states", max_tokens=c.max_tokens,
                                       batch_size=c.batch_size, progress=lambda n: tick(n, ""))
        d = p.tuned.d_model
        for method in methods:
            cfg = crosscoder_config(d, states.n_tokens, c.crosscoder_tokens, c.seed)
            stream = states.with_stream(cfg.batch_size, c.seed)
            key = fingerprint({"states": states.key, "method": method, "config": {
                k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"}})
            rel = f"{method}/checkpoint-{key}"
            tick = p.bar(f"{method}: training", cfg.steps)
            if method == "crosscoder":
                res = train_crosscoder(stream.batch_at, d, 2, cfg, checkpoint=root / rel,
                                       progress=tick)
            else:
                res = train_diff_sae(stream.batch_at, d, cfg, checkpoint=root / rel,
                                     progress=tick)
            summary[method] = _read(p, method, res, states, layer, texts,
                                    rel if out is not None else "")


__all__ = ["DICTIONARY_METHODS", "crosscoder_config", "run_dictionaries"]
