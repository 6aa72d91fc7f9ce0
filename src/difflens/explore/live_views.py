"""The pages of the live views (typed text, multiverse, steer and monitor): plain HTML with
a little JavaScript each (``live_*.js`` of ``explore/static``), which posts to the
``/api/live/...`` endpoints of ``difflens.explore.app`` and draws what comes back.
"""

from collections.abc import Sequence
from typing import Any

from difflens.explore.live import NO_MODELS
from difflens.explore.views import error_box, esc, page


def _live_page(title: str, intro: str, form: str, result: str, scripts: Sequence[str],
               info: dict[str, Any] | None) -> str:
    """A live view: ``scripts`` (files of ``explore/static``) run after ``common.js`` and
    ``live.js``, with ``info`` (``difflens.explore.live.info``) in the page's config."""
    if info is None:
        return page(title, f"<h1>{esc(title)}</h1><p>{intro}</p>{error_box(NO_MODELS)}")
    models = ", ".join(f"{esc(k)}: <b>{esc(v)}</b>" for k, v in info["models"].items())
    body = (f"<h1>{esc(title)}</h1><p>{intro}</p><p class='path'>Models: {models}</p>"
            f"<section class='panel'>{form}<div id='live-error' class='error' role='alert' "
            f"style='display:none'></div><div id='live-status'></div>{result}</section>")
    return page(title, body, scripts=["common.js", "live.js", *scripts],
                config={"info": info})


# -- typed text -----------------------------------------------------------------------------


def text_page(info: dict[str, Any] | None) -> str:
    top = info["limits"]["max_top_k"] if info else 10
    form = (f"<form id='form'><textarea id='text' rows='3' style='width:100%' placeholder="
            f"'type a text to score'></textarea><div class='controls'>Statistic <select "
            f"id='stat'></select> Top-k <input id='top_k' value='5' size='3' title='1 to "
            f"{top}'><button id='score'>score</button></div></form>")
    result = "<div id='panels'></div><div id='topk'></div>"
    intro = ("Type a text: each model scores it, and it is shown once per model, each token "
             "shaded by that model's value of the statistic (computed from the distribution "
             "that predicted the token). Hover or click a token for both models' top next "
             "tokens at that place; ⟶ shows what they expect after the text.")
    return _live_page("Type text", intro, form, result, ["shade.js", "live_text.js"],
                      info)


# -- the multiverse -------------------------------------------------------------------------


def tree_page(info: dict[str, Any] | None) -> str:
    lim = info["limits"] if info else {"max_depth": 5, "max_top_k": 10, "max_new_tokens": 64}
    form = (f"<form id='form' class='controls'>Prompt <input id='prompt' size='50' "
            f"placeholder='a prompt'> Depth <input id='depth' value='2' size='2' title='1 to "
            f"{lim['max_depth']}'> Top-k <input id='top_k' value='3' size='2' title='1 to "
            f"{lim['max_top_k']}'> Continue for <input id='max_new_tokens' value='20' "
            f"size='3' title='1 to {lim['max_new_tokens']}'> tokens <button id='grow'>grow"
            f"</button></form>")
    result = "<div id='trees' class='side'></div><div id='loom-out'></div>"
    intro = ("The most likely continuations of a prompt as a tree, each model on its own "
             "side: p is the probability of a token after its path, P(path) that of the whole "
             "path. Click a node to expand it (its top-k children, computed now) or fold it; "
             "▸ continue runs every model greedily from that branch.")
    return _live_page("Multiverse", intro, form, result, ["live_tree.js"], info)


# -- steer and monitor ----------------------------------------------------------------------


def steer_page(info: dict[str, Any] | None) -> str:
    lim = info["limits"] if info else {"max_alpha": 1000, "max_gain": 100,
                                       "max_new_tokens": 64}
    problems = "".join(f"<p class='path'>not usable: {esc(p)}</p>"
                       for p in (info or {}).get("problems", []))
    none = ("" if info is None or info["vectors"] or info["probes"] else
            "<p class='path'>No concept vectors or probes in the runs given: pass the --out "
            "folder of `difflens concepts extract` or `difflens control train-probe` to "
            "difflens explore.</p>")
    form = (f"{none}{problems}<form id='form'><div class='controls'>Prompt <input id='prompt' "
            f"size='50' placeholder='a prompt'> Tokens <input id='max_new_tokens' value='20' "
            f"size='3' title='1 to {lim['max_new_tokens']}'></div><div class='controls'>"
            f"Vector <select id='vector'><option value=''>(none)</option></select> Layer "
            f"<select id='layer'></select> α <input id='alpha' value='0' size='5' title="
            f"'-{lim['max_alpha']} to {lim['max_alpha']}'></div><div class='controls'>Probe "
            f"<select id='probe'><option value=''>(none)</option></select> Controller "
            f"<select id='controller'></select> Gain <input id='gain' value='0' size='4' "
            f"title='0 to {lim['max_gain']}'><button id='generate'>generate</button></div>"
            f"</form>")
    intro = ("Generate greedily from every model, unsteered and steered: α times a concept "
             "vector added to the residual stream at a layer, and a controller acting on a "
             "state probe. With a probe, each token is shaded by its score (measured before "
             "any steering at its position).")
    return _live_page("Steer and monitor", intro, form, "<div id='gens'></div>",
                      ["live_steer.js"], info)
