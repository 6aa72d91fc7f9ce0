"""The explorer's web app: a Starlette application over the run folders it was given, and
``serve``, which runs it with uvicorn.

Routes (``ID`` is a run's position in the order given):

- ``/``: every run, each in its own panel (a broken run says why in its panel).
- ``/runs/ID``: summary, figures and tables of one run; ``/runs/ID/file/PATH``: a file of it.
- ``/runs/ID/table?path=P``: a sortable, filterable, paged view of a Parquet table.
- ``/runs/ID/atlas``: every point of a trajectories run on a 2-D map (plotly scattergl).
- ``/runs/ID/tokens``: a collapse divergence run's texts, each token coloured by a statistic.
- ``/runs/ID/discover``: a discover run's hypothesis, each method's words, the Patchscope
  grid, steered samples and amplification; ``/api/runs/ID/discover/word?word=W`` (the
  texts where the models differ most on a word) and ``.../samples?alpha=A`` (the amplified
  samples at one alpha) are its data.
- ``/live/text``, ``/live/tree``, ``/live/steer``: the live views (typed text, multiverse,
  steer and monitor), which need the models given at start (``difflens.explore.live``);
  without them they say how to start with models.
- ``/api/...``: the JSON those pages load (``POST /api/live/...``: the live views' work).
- ``/static/NAME``: the pages' scripts and stylesheet, the files of the package's
  ``difflens/explore/static`` (package data) and only those, by name; and
  ``/static/plotly.min.js``, the installed plotly.js.

The app only reads. A path that does not lead to a file inside its run folder is a 404. A
bad live request is answered with one line of JSON (``{"error": ...}``): 400 for a body
that is not a JSON object (or is over ``MAX_BODY`` bytes) or when no models are
loaded, 422 for a value out of range.
"""

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from difflens.errors import InputError
from difflens.explore import data, live_views, runs, views
from difflens.explore.live import (
    NO_MODELS,
    Live,
    continue_branch,
    expand,
    float_field,
    ids_field,
    info,
    int_field,
    score_text,
    steer,
    steer_request,
    text_field,
    trees,
)

#: Addresses that only this machine can reach.
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Most bytes of a live request's body.
MAX_BODY = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ExploreConfig:
    """How the explorer is served."""

    host: str = "127.0.0.1"
    """Address to bind; anything but a loopback address exposes the runs to the network."""
    port: int = 8765
    """TCP port (0: any free port)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be 0 to 65535, got {self.port}")
        if not self.host:
            raise InputError("--host must name an address, e.g. 127.0.0.1")

    @property
    def exposed(self) -> bool:
        """Whether other machines may reach the server."""
        return self.host not in LOOPBACK


#: The kinds of file ``difflens/explore/static`` holds, and how each is served.
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def static_files() -> dict[str, bytes]:
    """The explorer's scripts and stylesheet by file name: the files of the package's
    ``difflens/explore/static`` folder (read with ``importlib.resources``, so from a
    wheel or an editable install alike). ``/static/NAME`` serves these and nothing else."""
    from importlib.resources import files

    folder = files("difflens.explore") / "static"
    return {f.name: f.read_bytes() for f in folder.iterdir()
            if f.is_file() and Path(f.name).suffix in STATIC_TYPES}


@functools.lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


def create_app(folders: Sequence[Path], *, allowed_hosts: Sequence[str] | None = None,
               live: Live | None = None) -> Any:
    """The Starlette app serving ``folders`` (read-only).

    Args:
        folders: run folders (the ``--out`` of difflens commands), each must exist (none
            at all only with ``live``).
        allowed_hosts: ``Host`` header values accepted (guards a loopback server against
            DNS rebinding); ``None`` accepts any.
        live: the loaded models of the live views (``difflens.explore.live.open_live``);
            ``None``: the live views say how to start with models.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route

    from difflens.explore.embedding_atlas_view import EmbeddingAtlasMount

    served = runs.open_runs(folders, allow_empty=live is not None)

    def run_of(request: Request) -> runs.Run | None:
        try:
            i = int(request.path_params["run"])
        except ValueError:
            return None
        return served[i] if 0 <= i < len(served) else None

    def missing(what: str) -> HTMLResponse:
        return HTMLResponse(views.not_found_page(what), status_code=404)

    def json_error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def panel(run: runs.Run) -> str:
        try:
            summary = runs.read_summary(run)
            head = views.headline_of(summary.data) if summary.data is not None else ""
            return views.run_panel(run, runs.kinds(run), summary, len(runs.tables(run)),
                                   len(runs.figures(run)), head)
        except OSError as exc:
            return views.broken_panel(run, f"cannot read this run folder: {exc.strerror}")

    def home(request: Request) -> HTMLResponse:
        return HTMLResponse(views.runs_page([panel(r) for r in served]))

    def overview(request: Request) -> HTMLResponse:
        run = run_of(request)
        if run is None:
            return missing("no such run")
        try:
            return HTMLResponse(views.run_page(
                run, runs.kinds(run), runs.read_summary(run), runs.figures(run),
                runs.tables(run), run.file("index.html") is not None))
        except OSError as exc:
            return HTMLResponse(views.page(run.name, views.broken_panel(
                run, f"cannot read this run folder: {exc.strerror}")))

    def file(request: Request) -> Response:
        run = run_of(request)
        path = run.file(request.path_params["path"]) if run is not None else None
        if path is None:
            return missing("no such file in this run")
        return FileResponse(path)

    def table(request: Request) -> HTMLResponse:
        run = run_of(request)
        rel = request.query_params.get("path", "")
        if run is None or not rel.endswith(".parquet") or run.file(rel) is None:
            return missing("no such table in this run")
        return HTMLResponse(views.table_page_html(run, rel))

    def table_api(request: Request) -> JSONResponse:
        run = run_of(request)
        q = request.query_params
        rel = q.get("path", "")
        path = run.file(rel) if run is not None and rel.endswith(".parquet") else None
        if path is None:
            return json_error("no such table in this run", 404)
        try:
            page = runs.table_page(
                path, offset=int(q.get("offset", "0")), size=int(q.get("size", "50")),
                sort=q.get("sort") or None, descending=q.get("desc", "0") == "1",
                filter_column=q.get("filter_column") or None,
                filter_op=q.get("filter_op", "contains"), filter_value=q.get("filter_value", ""))
        except ValueError as exc:  # InputError, and int() of a bad offset or size
            return json_error(str(exc), 422)
        return JSONResponse(dataclasses.asdict(page))

    def atlas(request: Request) -> HTMLResponse:
        run = run_of(request)
        return missing("no such run") if run is None else HTMLResponse(views.atlas_page(run))

    def run_api(work: Callable[[runs.Run, Any], Any]) -> Callable[[Request], Response]:
        """A JSON endpoint of one run: 404 for an unknown run, 422 with the one-line message
        of bad input; ``work(run, query)`` returns the JSON data (or bytes of it)."""
        def endpoint(request: Request) -> Response:
            run = run_of(request)
            if run is None:
                return json_error("no such run", 404)
            try:
                result = work(run, request.query_params)
            except InputError as exc:
                return json_error(str(exc), 422)
            if isinstance(result, bytes):
                return Response(result, media_type="application/json")
            return JSONResponse(result)
        return endpoint

    def path_work(run: runs.Run, q: Any) -> Any:
        if "prompt_id" not in q or "model" not in q:
            raise InputError("give prompt_id and model, e.g. ?prompt_id=0&model=base")
        return {"points": data.path_points(run, q["prompt_id"], q["model"])}

    def tokens_work(run: runs.Run, q: Any) -> Any:
        try:
            text_id = int(q.get("text_id", ""))
        except ValueError:
            raise InputError("text_id must be a whole number, e.g. ?text_id=0") from None
        return {"tokens": data.text_tokens(run, text_id)}

    atlas_api = run_api(lambda run, q: data.atlas_json(run))
    path_api = run_api(path_work)
    texts_api = run_api(lambda run, q: {"texts": [dataclasses.asdict(t)
                                                  for t in data.texts(run)]})
    tokens_api = run_api(tokens_work)

    def tokens(request: Request) -> HTMLResponse:
        run = run_of(request)
        return (missing("no such run") if run is None
                else HTMLResponse(views.tokens_page(run, data.STATISTICS)))

    def discover_view(request: Request) -> HTMLResponse:
        run = run_of(request)
        if run is None:
            return missing("no such run")
        summary = runs.read_summary(run)
        if not runs.is_discover(summary):
            return HTMLResponse(views.page(run.name, views.error_box(
                summary.error or "this run's summary has no discover results: the discover "
                "view shows the --out folder of `difflens discover`")), status_code=404)
        assert summary.data is not None
        d = summary.data["discover"]
        hyp = d.get("hypothesis") if isinstance(d.get("hypothesis"), dict) else {}
        words = [str(w) for w in hyp.get("words", [])]
        examples = [(str(e.get("source", "")), data.word_marks(str(e.get("text", "")), words))
                    for e in hyp.get("examples", []) if isinstance(e, dict)]
        try:
            grid, steering = data.patchscope_grid(run), data.steering_rows(run)
        except InputError as exc:
            return HTMLResponse(views.page(run.name, views.error_box(str(exc))))
        stages = []
        listed = summary.data.get("stages")
        for name, stage in (listed.items() if isinstance(listed, dict) else ()):
            root = (run.root / "stages" / str(name)).resolve()
            found = next((r.id for r in served if r.root == root), None)
            hyp = stage.get("hypothesis") if isinstance(stage, dict) else None
            stages.append((str(name), found, [str(w) for w in (hyp or {}).get("words", [])]))
        return HTMLResponse(views.discover_page(
            run, d, examples=examples, grid=grid, steering=steering,
            models=summary.data.get("models"), stages=stages,
            placed=data.examples_placed(run)))

    def word_work(run: runs.Run, q: Any) -> Any:
        data.discover_of(run)
        return data.word_texts(run, q.get("word", ""))

    def samples_work(run: runs.Run, q: Any) -> Any:
        try:
            alpha = float(q.get("alpha", ""))
        except ValueError:
            raise InputError("alpha must be a number, e.g. ?alpha=2") from None
        return data.amplify_samples(run, alpha)

    word_api = run_api(word_work)
    samples_api = run_api(samples_work)

    def plotly_js(request: Request) -> Response:
        return Response(_plotly_js(), media_type="text/javascript",
                        headers={"Cache-Control": "max-age=86400"})

    assets = {name: (body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
              for name, body in static_files().items()}

    def static(request: Request) -> Response:
        # a name looked up among the package's files: no path is ever built from the request
        found = assets.get(request.path_params["name"])
        if found is None:
            return missing("no such file")
        body, etag = found
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers,
                        media_type=STATIC_TYPES[Path(request.path_params["name"]).suffix])

    # -- live views --------------------------------------------------------------------------

    live_info = info(live) if live is not None else None

    def text_view(request: Request) -> HTMLResponse:
        return HTMLResponse(live_views.text_page(live_info))

    def tree_view(request: Request) -> HTMLResponse:
        return HTMLResponse(live_views.tree_page(live_info))

    def steer_view(request: Request) -> HTMLResponse:
        return HTMLResponse(live_views.steer_page(live_info))

    def info_api(request: Request) -> JSONResponse:
        return json_error(NO_MODELS, 400) if live_info is None else JSONResponse(live_info)

    async def body_of(request: Request) -> dict[str, Any] | JSONResponse:
        if live is None:
            return json_error(NO_MODELS, 400)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return json_error(f"the request has {len(raw)} bytes, more than {MAX_BODY}; send "
                              f"less text", 400)
        try:
            body = json.loads(raw)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            body = None
        if not isinstance(body, dict):
            return json_error('the request body must be a JSON object, e.g. {"text": "..."}',
                              400)
        return body

    def live_route(work: Callable[[Live, dict[str, Any]], Any]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> JSONResponse:
            body = await body_of(request)
            if isinstance(body, JSONResponse):
                return body
            assert live is not None
            try:
                result = await run_in_threadpool(work, live, body)
            except InputError as exc:
                return json_error(str(exc), 422)
            return JSONResponse(result)
        return endpoint

    def score_work(lv: Live, b: dict[str, Any]) -> Any:
        return dataclasses.asdict(score_text(
            lv, text_field(b, "text", lv.limits.max_chars),
            int_field(b, "top_k", 5, 1, lv.limits.max_top_k)))

    def tree_work(lv: Live, b: dict[str, Any]) -> Any:
        lim = lv.limits
        return trees(lv, text_field(b, "prompt", lim.max_chars),
                     depth=int_field(b, "depth", 2, 1, lim.max_depth),
                     top_k=int_field(b, "top_k", 3, 1, lim.max_top_k),
                     min_prob=float_field(b, "min_prob", 1e-3, 0.0, 0.999))

    def expand_work(lv: Live, b: dict[str, Any]) -> Any:
        lim = lv.limits
        return expand(lv, str(b.get("model", "")), text_field(b, "prompt", lim.max_chars),
                      ids_field(b, "path", len(lv.tokenizer), lim.max_path),
                      top_k=int_field(b, "top_k", 3, 1, lim.max_top_k))

    def continue_work(lv: Live, b: dict[str, Any]) -> Any:
        lim = lv.limits
        return continue_branch(lv, text_field(b, "prompt", lim.max_chars),
                               ids_field(b, "path", len(lv.tokenizer), lim.max_path),
                               max_new_tokens=int_field(b, "max_new_tokens", 20, 1,
                                                        lim.max_new_tokens))

    def steer_work(lv: Live, b: dict[str, Any]) -> Any:
        return steer(lv, steer_request(lv, b))

    routes = [
        Route("/", home),
        Route("/live/text", text_view),
        Route("/live/tree", tree_view),
        Route("/live/steer", steer_view),
        Route("/api/live/info", info_api),
        Route("/api/live/score", live_route(score_work), methods=["POST"]),
        Route("/api/live/tree", live_route(tree_work), methods=["POST"]),
        Route("/api/live/expand", live_route(expand_work), methods=["POST"]),
        Route("/api/live/continue", live_route(continue_work), methods=["POST"]),
        Route("/api/live/steer", live_route(steer_work), methods=["POST"]),
        Route("/runs/{run}", overview),
        Route("/runs/{run}/file/{path:path}", file),
        Route("/runs/{run}/table", table),
        Route("/runs/{run}/atlas", atlas),
        Route("/runs/{run}/tokens", tokens),
        Route("/runs/{run}/discover", discover_view),
        Route("/api/runs/{run}/table", table_api),
        Route("/api/runs/{run}/atlas", atlas_api),
        Route("/api/runs/{run}/path", path_api),
        Route("/api/runs/{run}/texts", texts_api),
        Route("/api/runs/{run}/tokens", tokens_api),
        Route("/api/runs/{run}/discover/word", word_api),
        Route("/api/runs/{run}/discover/samples", samples_api),
        Route("/static/plotly.min.js", plotly_js),
        Route("/static/{name}", static),
        Mount("/runs/{run}/embedding-atlas", app=EmbeddingAtlasMount(served)),
    ]
    middleware = ([] if allowed_hosts is None
                  else [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))])

    async def not_found(request: Request, exc: Exception) -> HTMLResponse:
        return missing("no such page")

    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={404: not_found})


def allowed_hosts_for(config: ExploreConfig) -> list[str] | None:
    """``Host`` headers a loopback server accepts (``None``: an exposed server takes any)."""
    return None if config.exposed else ["127.0.0.1", "localhost", "[::1]", "::1"]


def serve(folders: Sequence[Path], config: ExploreConfig, live: Live | None = None) -> None:
    """Serve the explorer until interrupted (blocks); ``live``: the models of the live
    views."""
    import uvicorn

    app = create_app(folders, allowed_hosts=allowed_hosts_for(config), live=live)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


@dataclasses.dataclass(frozen=True)
class Background:
    """A server running in a thread of this process (tests, benchmarks)."""

    url: str
    """``http://127.0.0.1:PORT`` (no trailing slash)."""
    port: int


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0
                    ) -> Iterator[Background]:
    """Run ``app`` with uvicorn in a daemon thread until the block ends (``port`` 0: a free
    one, reported in the yielded ``Background``)."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the explorer did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Background(url=f"http://{host}:{bound}", port=int(bound))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
