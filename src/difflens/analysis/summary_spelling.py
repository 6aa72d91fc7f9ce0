"""The one spelling of a value with its CI in ``summary.json``, and the migration of the
older spellings to it.

Every estimate is written as ``to_json``:
``{"value", "ci_low", "ci_high", "n", "resampled"}``, with any keys that say what it is of
(``layer``, ``alpha``, ``token``, ``share``, ...) beside them. Until difflens 0.1 the same
thing was spelled five ways; ``respell`` rewrites a summary in those spellings into the
one spelling, keeping every key's path (only the CI leaves change):

1. ``{"mean", "ci95": [lo, hi], "n"}`` becomes an estimate (``mean`` is its ``value``);
2. a dict with ``ci_low`` and ``ci_high`` (or ``ci95``) beside one value key (``mean``,
   ``delta``, ``diff``, ``cosine``, ``cos``, ``auc``, ``p_match``, ``mean_jump``,
   ``explained``, ``pearson_r``, ``T`` (a matched temperature), or, for a settling layer,
   ``layer``) renames that key ``value``;
3. a key ``K`` with sibling CI keys (``K_ci_low`` and ``K_ci_high``, ``K_ci95`` or
   ``K_ci``; ``X_ci`` also pairs with ``X_delta``, and ``X_ci95`` with ``X_mean``) becomes an
   estimate whose ``value`` is the old ``K`` (its ``n`` the sibling ``K_n``, where there is
   one), and the sibling CI keys go; a dict-level ``ci_low``/``ci_high`` that only
   repeated one of those CIs goes too.

Estimates respelled from an older summary have ``n = None`` where the old one did not
record it in the same dict, and ``resampled = ""``. The documentation's renderer
(``scripts/render_results.py``) reads stored runs of both spellings through this module.
"""

import math
from collections.abc import Mapping
from typing import Any

#: Keys that held an estimate's value in the older spellings, in order of preference.
VALUE_KEYS = ("value", "mean", "delta", "diff", "cosine", "cos", "auc", "p_match",
              "mean_jump", "explained", "pearson_r", "T", "layer")
ESTIMATE_KEYS = ("value", "ci_low", "ci_high", "n", "resampled")


def is_estimate(obj: object) -> bool:
    """A dict in the one spelling (``value``, ``ci_low`` and ``ci_high`` among its keys)."""
    return isinstance(obj, Mapping) and {"value", "ci_low", "ci_high"} <= set(obj)


def _pair(v: Any) -> tuple[Any, Any] | None:
    if isinstance(v, list | tuple) and len(v) == 2:
        return v[0], v[1]
    return None


def _estimate(value: Any, lo: Any, hi: Any, n: Any = None, resampled: str = ""
              ) -> dict[str, Any]:
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": n, "resampled": resampled}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    fa, fb = float(a), float(b)
    return fa == fb or (math.isnan(fa) and math.isnan(fb))


def _respell_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: respell(v) for k, v in d.items()}
    if is_estimate(out):
        # an attribution stage's share CI, spelled share_ci_low/_high for a few commits
        # (issue 27): share_low/share_high beside the share
        for old, new in (("share_ci_low", "share_low"), ("share_ci_high", "share_high")):
            if old in out:
                out[new] = out.pop(old)
        return out
    # 1. {"mean", "ci95": [lo, hi], "n"} (a value key and a ci95 pair)
    ci95 = _pair(out.get("ci95"))
    if ci95 is not None:
        key = next((k for k in VALUE_KEYS if k in out), None)
        if key is not None:
            rest = {k: v for k, v in out.items() if k not in (key, "ci95", "n")}
            return {**_estimate(out[key], *ci95, out.get("n")), **rest}
    # 3. sibling CI keys: K with K_ci_low/K_ci_high, K_ci95 or K_ci (X_ci also with X_delta)
    cis: list[tuple[Any, Any]] = []
    for key in [k for k in out if k.endswith("_ci95") and k[:-5] not in out
                and f"{k[:-5]}_mean" in out]:  # K_mean + K_ci95 (+ K_n): K_mean
        stem = key[:-5]
        lo, hi = _pair(out.pop(key))  # type: ignore[misc]
        out[f"{stem}_mean"] = _estimate(out[f"{stem}_mean"], lo, hi, out.get(f"{stem}_n"))
        cis.append((lo, hi))
    for key in list(out):
        for lo_k, hi_k, pair_k in ((f"{key}_ci_low", f"{key}_ci_high", None),
                                   (None, None, f"{key}_ci95"), (None, None, f"{key}_ci")):
            if lo_k is not None and lo_k in out and hi_k in out:
                lo, hi = out.pop(lo_k), out.pop(hi_k)
            elif pair_k is not None and _pair(out.get(pair_k)) is not None:
                lo, hi = _pair(out.pop(pair_k))  # type: ignore[misc]
            else:
                continue
            out[key] = _estimate(out[key], lo, hi, out.get(f"{key}_n"))
            cis.append((lo, hi))
            break
    for key in [k for k in out if k.endswith("_ci") and _pair(out[k]) is not None]:
        stem = key[: -len("_ci")]
        if f"{stem}_delta" in out and not is_estimate(out[f"{stem}_delta"]):
            lo, hi = _pair(out.pop(key))  # type: ignore[misc]
            out[f"{stem}_delta"] = _estimate(out[f"{stem}_delta"], lo, hi)
            cis.append((lo, hi))
    # 2. one estimate's leaves spread over the dict, under its value key
    if "ci_low" in out and "ci_high" in out:
        key = next((k for k in VALUE_KEYS if k in out and not is_estimate(out[k])), None)
        if key is not None:
            value = out.pop(key)
            rest = {k: v for k, v in out.items() if k not in ("ci_low", "ci_high", "n")}
            return {**_estimate(value, out["ci_low"], out["ci_high"], out.get("n")), **rest}
        if any(_same(out["ci_low"], lo) and _same(out["ci_high"], hi) for lo, hi in cis):
            del out["ci_low"], out["ci_high"]  # it repeated a sibling estimate's CI
    return out


def respell(summary: Any) -> Any:
    """``summary`` (a ``summary.json`` as loaded, or any part of it) with every estimate in
    the one spelling; a summary already in it comes back equal."""
    if isinstance(summary, Mapping):
        return _respell_dict(summary)
    if isinstance(summary, list):
        return [respell(v) for v in summary]
    return summary


def leftover_ci_keys(summary: Any, path: str = "") -> list[str]:
    """Paths of CI-looking keys that are not part of an estimate in the one spelling (what a
    summary still spells the old way); empty for a fully respelled summary."""
    out: list[str] = []
    if isinstance(summary, Mapping):
        est = is_estimate(summary)
        for k, v in summary.items():
            old = k == "ci95" or k.endswith(("_ci95", "_ci_low", "_ci_high", "_ci"))
            if old or (k in ("ci_low", "ci_high") and not est):
                out.append(f"{path}/{k}")
            out += leftover_ci_keys(v, f"{path}/{k}")
    elif isinstance(summary, list):
        for i, v in enumerate(summary):
            out += leftover_ci_keys(v, f"{path}[{i}]")
    return out
