"""State probes: a logistic regression (or a small MLP) on the residual stream that scores
every token in [0, 1].

A probe reads the hidden state at one captured layer (the numbering of
``record_layers``) and gives ``sigmoid(w . h + b)``: the
probability that the text at that token is in the *bad* region. It is trained on labelled
text where every token inherits the label of the segment it belongs to:

- any JSONL with ``text`` and ``label`` (1 or ``true`` = bad), optionally ``context``
  (unlabelled text before it) and ``group`` (examples of one group share a split);
- preference pairs in the hh-rlhf layout (``chosen`` / ``rejected`` transcripts): the last
  assistant reply is the labelled text, rejected = bad, the dialogue before it the context;
- for the organism, stories whose sentences carry the world's theme labels.

Examples are split by group into train / validation / test; the layer is the one with the
best validation AUC, and the reported AUC is on the test split, with a bootstrap CI over
test groups. A probe is saved as safetensors (``weight``, ``bias``) with its metadata as
JSON, in the file and next to it, and refuses to load onto a model of another width or
tokenizer.

``kind="mlp"`` also fits a one-hidden-layer ReLU network (scikit-learn's ``MLPClassifier``,
seeded) at every layer, keeps the layer with the MLP's best validation AUC, and reports its
test AUC next to the logistic probe's at the same layer, with a paired bootstrap CI of the
difference (``metrics["mlp_auc"]``). An MLP probe scores with its network; its
``direction`` (what controllers steer along) is the logistic probe's at the
same layer. Its weights are stored in the same safetensors file (``mlp.w1``, ``mlp.b1``,
``mlp.w2``, ``mlp.b2``), never pickled.
"""

import dataclasses
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from difflens._config import option
from difflens._io import write_bytes_atomic, write_json_atomic
from difflens._types import Vector
from difflens.analysis.bootstrap import Estimate
from difflens.analysis.roc import auc, auc_ci, paired_auc_ci
from difflens.capture.engine import forward_batch
from difflens.control.steering import SteeringVector
from difflens.errors import DifflensWarning, InputError
from difflens.inputs.labelled import LabelledText
from difflens.models.layers import parse_layer_list, parse_layers
from difflens.models.loading import LoadedModel

PROBE_FORMAT = "difflens-state-probe-1"
PROBE_KINDS: tuple[str, ...] = ("logistic", "mlp")
MLP_TENSORS: tuple[str, ...] = ("mlp.w1", "mlp.b1", "mlp.w2", "mlp.b2")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """How a probe is trained."""

    layers: str | tuple[int, ...] = option("all", flag="--layers", parse=parse_layer_list,
                                           help="'all' or a list like 0,3,5; the best on "
                                           "validation is kept.")
    """Layers to try (``"all"`` or indices); the best on validation is kept."""
    max_tokens: int = option(256, flag="--max-tokens", help="Tokens read per example (the "
                             "end is kept).")
    """Tokens per example read by the model (longer examples keep their end)."""
    tokens_per_example: int = option(48, flag="--tokens-per-example", help="Labelled tokens "
                                     "kept per example (a seeded subsample).")
    """Labelled tokens kept per example (a seeded subsample), bounding memory."""
    val_fraction: float = option(0.2, flag="--val-fraction", help="Share of examples that "
                                 "picks the layer and the threshold.")
    test_fraction: float = option(0.2, flag="--test-fraction", help="Held-out share of "
                                  "examples.")
    C: float = option(1.0, flag="--C", help="Inverse L2 strength of the logistic "
                      "regression.")
    """Inverse L2 strength of the logistic regression (on standardised states)."""
    batch_size: int = option(16, flag="--batch-size", help="Most examples per forward pass.")
    seed: int = option(0, flag="--seed", help="Seed of the splits and the bootstraps.")
    n_boot: int = option(1000, flag="--n-boot", help="Bootstrap resamples of each CI.")
    kind: str = option("logistic", flag="--method", help="logistic|mlp: an MLP probe is "
                       "compared with the logistic one at the same layer.")
    """``logistic``, or ``mlp``: a one-hidden-layer ReLU network, compared with the logistic
    probe at the same layer."""
    hidden: int = option(32, flag="--hidden", help="mlp: hidden units.")
    """mlp: hidden units."""
    alpha: float = option(1e-3, flag="--alpha", help="mlp: L2 strength.")
    """mlp: L2 strength (on standardised states)."""

    RENAMED: ClassVar[dict[str, str]] = {"kind": "method"}

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise InputError(f"probe kind (--method) must be one of "
                             f"{', '.join(PROBE_KINDS)}, got {self.kind!r}")
        if self.hidden < 1 or not self.alpha >= 0:
            raise InputError(f"an MLP probe needs hidden >= 1 and alpha >= 0, got "
                             f"{self.hidden} and {self.alpha}")
        if not 0 < self.val_fraction < 1 or not 0 < self.test_fraction < 1 or \
                self.val_fraction + self.test_fraction >= 1:
            raise InputError("val_fraction and test_fraction must be in (0, 1) and sum to "
                             f"less than 1, got {self.val_fraction} and {self.test_fraction}")
        if self.tokens_per_example < 1 or self.max_tokens < 2:
            raise InputError("tokens_per_example must be >= 1 and max_tokens >= 2")


@dataclasses.dataclass(frozen=True)
class StateProbe:
    """``score(h) = sigmoid(weight . h + bias)`` at ``layer``, with the model it belongs to."""

    weight: Vector
    bias: float
    layer: int
    threshold: float
    """Default alert / control threshold in [0, 1]."""
    state_norm: float
    """Mean L2 norm of the states it was trained on: the unit of steering gains."""
    model: dict[str, Any]
    """Identity of the model it was trained on (name, d_model, tokenizer hash, ...)."""
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Held-out AUCs per layer (``layers``, the rows of ``data/probe_layers``), the chosen
    layer's test AUC (``auc``, an estimate ``{value, ci_low, ci_high, n, resampled}`` over
    test tokens, resampling test groups) and the data it saw."""
    mlp: dict[str, Tensor] | None = None
    """An MLP probe's network (``w1`` [hidden, d_model], ``b1`` [hidden], ``w2`` [hidden],
    ``b2`` [1]), which scores instead of ``weight``; None for a logistic probe."""

    @property
    def kind(self) -> str:
        return "logistic" if self.mlp is None else "mlp"

    @property
    def direction(self) -> SteeringVector:
        """Unit vector towards the bad region, at the probe's layer."""
        w = self.weight.float()
        return SteeringVector({self.layer: w / w.norm().clamp_min(1e-12)},
                              {"method": "state_probe", "model": self.model,
                               "threshold": self.threshold})

    def score(self, hidden: Float[Tensor, "*batch d_model"]) -> Float[Tensor, " *batch"]:
        if self.mlp is not None:
            m = {k: v.to(device=hidden.device, dtype=torch.float32) for k, v in self.mlp.items()}
            z = torch.relu(hidden.float() @ m["w1"].T + m["b1"])
            return torch.sigmoid(z @ m["w2"] + m["b2"][0])
        w = self.weight.to(device=hidden.device, dtype=torch.float32)
        return torch.sigmoid(hidden.float() @ w + self.bias)

    def check(self, lm: LoadedModel, *, allow_other_weights: bool = False) -> None:
        """Raise ``InputError`` unless this probe fits ``lm`` (width, layers, tokenizer,
        and unless ``allow_other_weights``, weights)."""
        m, ident = self.model, lm.identity
        where = f"probe of {m.get('name')!r} (d_model {m.get('d_model')}, layer {self.layer})"
        if int(m.get("d_model", -1)) != lm.d_model:
            raise InputError(f"{where} does not fit {ident.name!r}, whose d_model is "
                             f"{lm.d_model}; train a probe on this model (difflens control "
                             f"train-probe)")
        if int(m.get("n_layers", -1)) != lm.n_layers or self.layer > lm.n_layers:
            raise InputError(f"{where} was trained on a model with {m.get('n_layers')} layers; "
                             f"{ident.name!r} has {lm.n_layers}; train a probe on this model")
        if m.get("tokenizer_sha256") != ident.tokenizer_sha256:
            raise InputError(f"{where} was trained with another tokenizer than "
                             f"{ident.name!r}'s; train a probe on this model")
        if m.get("weights_sha256") != ident.weights_sha256:
            if not allow_other_weights:
                raise InputError(f"{where} was trained on other weights than {ident.name!r} "
                                 f"(same width and tokenizer: a sibling?); pass "
                                 f"allow_other_weights=True (CLI --allow-other-model) to use "
                                 f"it anyway")
            warnings.warn(f"{where} was trained on other weights than {ident.name!r}",
                          DifflensWarning, stacklevel=2)

    def save(self, path: str | Path) -> None:
        """Write ``path`` (safetensors, metadata inside) and ``path`` with ``.json``."""
        from safetensors.torch import save

        path = Path(path)
        meta = self._meta()
        tensors = {"weight": self.weight.float().contiguous(),
                   "bias": torch.tensor([self.bias], dtype=torch.float32)}
        if self.mlp is not None:
            tensors |= {f"mlp.{k}": v.float().contiguous() for k, v in self.mlp.items()}
        data = save(tensors, metadata={"difflens": json.dumps(meta, sort_keys=True)})
        write_bytes_atomic(path, data)
        write_json_atomic(path.with_suffix(".json"), meta)

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "format": PROBE_FORMAT, "layer": self.layer, "threshold": self.threshold,
            "state_norm": self.state_norm, "model": self.model, "metrics": self.metrics}
        if self.mlp is not None:
            meta["kind"] = self.kind
        return meta


def load_probe(path: str | Path) -> StateProbe:
    """Read a probe written by ``StateProbe.save`` (safetensors; no pickle)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "probe.safetensors"
    if not path.is_file():
        raise InputError(f"probe file {path} does not exist; train one with difflens probe "
                         f"train --out DIR")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("difflens", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a difflens probe file ({exc})") from None
    kind = meta.get("kind", "logistic")
    expected = {"weight", "bias"} | (set(MLP_TENSORS) if kind == "mlp" else set())
    if meta.get("format") != PROBE_FORMAT or set(tensors) != expected:
        raise InputError(f"{path}: not a difflens probe file (format {meta.get('format')!r}, "
                         f"kind {kind!r}, tensors {sorted(tensors)}); train one with difflens "
                         f"control train-probe")
    mlp = ({k.removeprefix("mlp."): tensors[k].float() for k in MLP_TENSORS}
           if kind == "mlp" else None)
    return StateProbe(weight=tensors["weight"].float(), bias=float(tensors["bias"][0]),
                      layer=int(meta["layer"]), threshold=float(meta["threshold"]),
                      state_norm=float(meta["state_norm"]), model=dict(meta["model"]),
                      metrics=dict(meta.get("metrics", {})), mlp=mlp)


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0 or threshold != threshold:
        raise InputError(f"threshold must be a probability in [0, 1], got {threshold}")
    return float(threshold)


# -- data ---------------------------------------------------------------------------------


# -- training -----------------------------------------------------------------------------


def _encode(lm: LoadedModel, ex: LabelledText, max_tokens: int
            ) -> tuple[list[int], list[int], list[int]]:
    """Token ids, per-token labels (-1 = context) and segment indices of one example,
    keeping its end."""
    tok = lm.tokenizer
    text = ex.text
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    bounds, pos = [], 0
    for seg, lab in ex.segments:
        bounds.append((pos, pos + len(seg), -1 if lab is None else lab))
        pos += len(seg)
    labels, seg_index = [], []
    for (a, b) in offsets:
        lab, where = -1, -1
        if b > a:
            for j, (s0, s1, sl) in enumerate(bounds):
                if s0 <= a < s1:
                    lab, where = sl, j
                    break
        labels.append(lab)
        seg_index.append(where)
    if len(ids) > max_tokens:
        ids, labels, seg_index = ids[-max_tokens:], labels[-max_tokens:], seg_index[-max_tokens:]
    return ids, labels, seg_index


def _split(groups: np.ndarray, config: ProbeConfig) -> np.ndarray:
    """0 train, 1 validation, 2 test, by group (seeded)."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(uniq))
    n_test = max(1, round(config.test_fraction * len(uniq)))
    n_val = max(1, round(config.val_fraction * len(uniq)))
    if len(uniq) - n_test - n_val < 1:
        raise InputError(f"{len(uniq)} groups of examples are too few to split into train, "
                         f"validation and test; give more examples")
    part = np.zeros(len(uniq), dtype=np.int64)
    part[order[:n_test]] = 2
    part[order[n_test:n_test + n_val]] = 1
    return part[np.searchsorted(uniq, groups)]


@dataclasses.dataclass(frozen=True)
class ProbeFit:
    """A trained probe and how every layer did."""

    probe: StateProbe
    layers: list[dict[str, Any]]
    """Per layer: ``auc_val``, ``auc_test`` (tokens), ``auc_test_segment`` (mean score per
    labelled segment), CIs over test groups, counts."""


def train_probe(lm: LoadedModel, examples: Sequence[LabelledText], *,
                config: ProbeConfig = ProbeConfig(), threshold: float | None = None,
                progress: Callable[[int], None] | None = None,
                source: str = "") -> ProbeFit:
    """Fit a logistic-regression probe (and, with ``config.kind="mlp"``, an MLP) per layer
    and keep the best on validation.

    Args:
        lm: the model whose states are probed.
        examples: labelled texts (``read_labelled``, ``read_preference_pairs``,
            ``organism_labelled``).
        config: layers, split, regularisation, seed.
        threshold: the probe's default threshold (stored with it); default: the one that
            best separates good from bad segments by their mean score on validation
            (balanced accuracy), so it suits windowed "is this stretch bad" decisions.
        progress: called with the number of examples done after each batch.
        source: a description of the data, stored with the probe.
    """
    from sklearn.linear_model import LogisticRegression

    if threshold is not None:
        check_threshold(threshold)
    if not examples:
        raise InputError("no labelled examples to train a probe on")
    layers = parse_layers(config.layers, lm)
    enc = [_encode(lm, ex, config.max_tokens) for ex in examples]
    rng = np.random.default_rng(config.seed)
    picks: list[np.ndarray] = []
    for _ids, labels, _seg in enc:
        lab = np.flatnonzero(np.asarray(labels) >= 0)
        if len(lab) > config.tokens_per_example:
            lab = np.sort(rng.choice(lab, config.tokens_per_example, replace=False))
        picks.append(lab)
    states: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    ys, gs, segs = [], [], []
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    for start in range(0, len(order), config.batch_size):
        chunk = order[start:start + config.batch_size]
        out = forward_batch(lm, [enc[i][0] for i in chunk], layers)
        rows = [picks[i].tolist() for i in chunk]
        flat = out.flat_rows(rows)
        for layer in layers:
            h = out.hidden[layer]
            states[layer].append(h.reshape(-1, h.shape[-1])[flat].float().cpu())
        for i in chunk:
            ys.append(np.asarray(enc[i][1])[picks[i]])
            gs.append(np.full(len(picks[i]), examples[i].group))
            segs.append(i * 10_000 + np.asarray(enc[i][2])[picks[i]])
        if progress is not None:
            progress(len(chunk))
    y = np.concatenate(ys)
    groups = np.concatenate(gs)
    seg_id = np.concatenate(segs)
    if len(np.unique(y)) < 2:
        raise InputError("the labelled tokens are all of one class; a probe needs both")
    part = _split(groups, config)
    tr, va, te = (part == 0), (part == 1), (part == 2)
    rows, fits = [], {}
    mlp_fits: dict[int, dict[str, Tensor]] = {}
    for layer in layers:
        X = torch.cat(states[layer]).numpy().astype(np.float64)
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
        clf = LogisticRegression(C=config.C, max_iter=2000, class_weight="balanced")
        clf.fit((X[tr] - mu) / sd, y[tr])
        w = clf.coef_[0] / sd
        b = float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())
        s = 1 / (1 + np.exp(-(X @ w + b)))
        seg_mean = _segment_means(s[te], y[te], seg_id[te])
        seg_val = _segment_means(s[va], y[va], seg_id[va])
        test = auc_ci(y[te], s[te], groups[te], n_boot=config.n_boot, seed=config.seed,
                      resampled="groups")
        rows.append({"layer": layer, "auc_val": auc(y[va], s[va]), "auc_test": test.value,
                     "auc_test_ci_low": test.ci_low, "auc_test_ci_high": test.ci_high,
                     "auc_test_segment": auc(*seg_mean),
                     "segment_threshold": _balanced_threshold(*seg_val),
                     "auc_train": auc(y[tr], s[tr]),
                     "n_train_tokens": int(tr.sum()), "n_test_tokens": int(te.sum()),
                     "n_test_groups": int(len(np.unique(groups[te]))),
                     "bad_share": float(y.mean()),
                     "state_norm": float(np.linalg.norm(X[tr], axis=1).mean())})
        fits[layer] = (w, b)
        if config.kind == "mlp":
            net, s_mlp = _fit_mlp(X, y, tr, config)
            mlp_fits[layer] = net
            rows[-1].update(_mlp_row(y, s, s_mlp, groups, seg_id, tr, va, te, config))
    key = "mlp_auc_val" if config.kind == "mlp" else "auc_val"
    best = max(rows, key=lambda r: (np.nan_to_num(r[key], nan=-1.0), -r["layer"]))
    w, b = fits[best["layer"]]
    ident = lm.identity
    pre = "mlp_" if config.kind == "mlp" else ""
    metrics: dict[str, Any] = {
        "auc": _test_auc(best, f"{pre}auc_test"),
        "auc_segment": best[f"{pre}auc_test_segment"], "layers": rows,
        "n_examples": len(examples), "source": source,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(config).items()
                   if config.kind == "mlp" or k not in ("kind", "hidden", "alpha")}}
    if config.kind == "mlp":
        metrics["mlp_auc"] = _mlp_comparison(best)
    probe = StateProbe(
        weight=torch.tensor(w, dtype=torch.float32), bias=b, layer=int(best["layer"]),
        threshold=float(best[f"{pre}segment_threshold"] if threshold is None else threshold),
        state_norm=float(best["state_norm"]),
        model={"name": ident.name, "d_model": lm.d_model, "n_layers": lm.n_layers,
               "tokenizer_sha256": ident.tokenizer_sha256,
               "weights_sha256": ident.weights_sha256, "architecture": ident.architecture},
        metrics=metrics, mlp=mlp_fits.get(int(best["layer"])))
    return ProbeFit(probe=probe, layers=rows)


def _fit_mlp(X: np.ndarray, y: np.ndarray, tr: np.ndarray, config: ProbeConfig
             ) -> tuple[dict[str, Tensor], np.ndarray]:
    """A seeded one-hidden-layer ReLU classifier on standardised training states; returns its
    network with the standardisation folded into the first layer, and its score of every
    row of ``X``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    clf = MLPClassifier(hidden_layer_sizes=(config.hidden,), alpha=config.alpha,
                        max_iter=300, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((X[tr] - mu) / sd, y[tr])
    w1 = clf.coefs_[0].T / sd
    b1 = clf.intercepts_[0] - w1 @ mu
    w2, b2 = clf.coefs_[1][:, 0], float(clf.intercepts_[1][0])
    z = np.maximum(X @ w1.T + b1, 0.0) @ w2 + b2
    net = {"w1": torch.tensor(w1, dtype=torch.float32), "b1": torch.tensor(b1, dtype=torch.float32),
           "w2": torch.tensor(w2, dtype=torch.float32),
           "b2": torch.tensor([b2], dtype=torch.float32)}
    return net, 1 / (1 + np.exp(-z))


def _mlp_row(y: np.ndarray, s_lin: np.ndarray, s_mlp: np.ndarray, groups: np.ndarray,
             seg_id: np.ndarray, tr: np.ndarray, va: np.ndarray, te: np.ndarray,
             config: ProbeConfig) -> dict[str, Any]:
    """The MLP's columns of a layer row: its AUCs, and its test AUC minus the logistic
    probe's with a paired CI (the same resampled test groups for both)."""
    mlp, diff = paired_auc_ci(y[te], s_mlp[te], s_lin[te], groups[te], n_boot=config.n_boot,
                              seed=config.seed)
    return {"mlp_auc_val": auc(y[va], s_mlp[va]), "mlp_auc_test": mlp.value,
            "mlp_auc_test_ci_low": mlp.ci_low, "mlp_auc_test_ci_high": mlp.ci_high,
            "mlp_minus_logistic": diff.value,
            "mlp_minus_logistic_ci_low": diff.ci_low, "mlp_minus_logistic_ci_high": diff.ci_high,
            "mlp_auc_test_segment": auc(*_segment_means(s_mlp[te], y[te], seg_id[te])),
            "mlp_segment_threshold": _balanced_threshold(
                *_segment_means(s_mlp[va], y[va], seg_id[va])),
            "mlp_auc_train": auc(y[tr], s_mlp[tr])}


def _test_auc(row: dict[str, Any], key: str) -> dict[str, Any]:
    """The test-token AUC ``key`` of a layer row (``auc_test``, ``mlp_auc_test``,
    ``mlp_minus_logistic``) as an estimate: ``{value, ci_low, ci_high, n, resampled}``, n
    the test tokens, the CI over resampled test groups."""
    return Estimate(value=row[key], ci_low=row[f"{key}_ci_low"], ci_high=row[f"{key}_ci_high"],
                    n=int(row["n_test_tokens"]), resampled="groups").to_json()


def _mlp_comparison(row: dict[str, Any]) -> dict[str, Any]:
    """``probe.mlp_auc``: the MLP's held-out token AUC at its layer, the logistic probe's at
    the same layer, their paired difference (each an estimate over the test tokens,
    resampling test groups), and both segment AUCs."""
    return {**_test_auc(row, "mlp_auc_test"), "layer": row["layer"],
            "logistic": _test_auc(row, "auc_test"),
            "difference": _test_auc(row, "mlp_minus_logistic"),
            "segment": {"value": row["mlp_auc_test_segment"],
                        "logistic": row["auc_test_segment"]},
            "n_test_tokens": row["n_test_tokens"], "n_test_groups": row["n_test_groups"]}


def _segment_means(s: np.ndarray, y: np.ndarray, seg: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(seg, return_inverse=True)
    sums = np.bincount(inv, weights=s)
    counts = np.bincount(inv)
    labels = np.zeros(len(uniq))
    labels[inv] = y
    return labels, sums / counts


def _balanced_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The score cut with the best balanced accuracy (0.5 when one class is missing)."""
    if len(np.unique(y)) < 2:
        return 0.5
    from sklearn.metrics import roc_curve

    fpr, tpr, cuts = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(cuts[best], 0.0, 1.0))


def score_texts(lm: LoadedModel, probe: StateProbe, texts: Iterable[str], *,
                batch_size: int = 16) -> list[np.ndarray]:
    """The probe's score at every token of each text (one teacher-forced pass per batch)."""
    tok = lm.tokenizer
    seqs = [tok(t)["input_ids"] for t in texts]
    out: list[np.ndarray] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        res = forward_batch(lm, chunk, [probe.layer])
        sc = probe.score(res.hidden[probe.layer]).cpu().numpy()
        out += [sc[b, res.sequence(b, len(s))] for b, s in enumerate(chunk)]
    return out
