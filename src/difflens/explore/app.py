"""The explorer's web app: a Starlette application over the run folders it was given, and
:func:`serve`, which runs it with uvicorn.

Routes (``ID`` is a run's position in the order given):

- ``/``: every run, each in its own panel (a broken run says why in its panel).
- ``/runs/ID``: summary, figures and tables of one run; ``/runs/ID/file/PATH``: a file of it.
- ``/runs/ID/table?path=P``: a sortable, filterable, paged view of a Parquet table.
- ``/runs/ID/atlas``: every point of a trajectories run on a 2-D map (plotly scattergl).
- ``/runs/ID/tokens``: a collapse divergence run's texts, each token coloured by a statistic.
- ``/api/...``: the JSON those pages load; ``/static/plotly.min.js``: the installed plotly.js.

The app only reads. A path that does not lead to a file inside its run folder is a 404.
"""

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from difflens.errors import InputError
from difflens.explore import data, runs, views

#: Addresses that only this machine can reach.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


@functools.lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


def create_app(folders: Sequence[Path], *, allowed_hosts: Sequence[str] | None = None) -> Any:
    """The Starlette app serving ``folders`` (read-only).

    Args:
        folders: run folders (the ``--out`` of difflens commands), each must exist.
        allowed_hosts: ``Host`` header values accepted (guards a loopback server against
            DNS rebinding); ``None`` accepts any.
    """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    served = runs.open_runs(folders)

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

    def atlas_api(request: Request) -> Response:
        run = run_of(request)
        if run is None:
            return json_error("no such run", 404)
        try:
            return Response(data.atlas_json(run), media_type="application/json")
        except InputError as exc:
            return json_error(str(exc), 422)

    def tokens(request: Request) -> HTMLResponse:
        run = run_of(request)
        return (missing("no such run") if run is None
                else HTMLResponse(views.tokens_page(run, data.STATISTICS)))

    def texts_api(request: Request) -> JSONResponse:
        run = run_of(request)
        if run is None:
            return json_error("no such run", 404)
        try:
            return JSONResponse({"texts": [dataclasses.asdict(t) for t in data.texts(run)]})
        except InputError as exc:
            return json_error(str(exc), 422)

    def tokens_api(request: Request) -> JSONResponse:
        run = run_of(request)
        if run is None:
            return json_error("no such run", 404)
        try:
            text_id = int(request.query_params.get("text_id", ""))
        except ValueError:
            return json_error("text_id must be a whole number, e.g. ?text_id=0", 422)
        try:
            return JSONResponse({"tokens": data.text_tokens(run, text_id)})
        except InputError as exc:
            return json_error(str(exc), 422)

    def plotly_js(request: Request) -> Response:
        return Response(_plotly_js(), media_type="text/javascript",
                        headers={"Cache-Control": "max-age=86400"})

    routes = [
        Route("/", home),
        Route("/runs/{run}", overview),
        Route("/runs/{run}/file/{path:path}", file),
        Route("/runs/{run}/table", table),
        Route("/runs/{run}/atlas", atlas),
        Route("/runs/{run}/tokens", tokens),
        Route("/api/runs/{run}/table", table_api),
        Route("/api/runs/{run}/atlas", atlas_api),
        Route("/api/runs/{run}/texts", texts_api),
        Route("/api/runs/{run}/tokens", tokens_api),
        Route("/static/plotly.min.js", plotly_js),
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


def serve(folders: Sequence[Path], config: ExploreConfig) -> None:
    """Serve the explorer until interrupted (blocks)."""
    import uvicorn

    app = create_app(folders, allowed_hosts=allowed_hosts_for(config))
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
    one, reported in the yielded :class:`Background`)."""
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
