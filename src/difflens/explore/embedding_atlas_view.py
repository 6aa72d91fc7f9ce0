"""Apple's embedding-atlas over the points of a trajectories run, served by the explorer.

``/runs/N/embedding-atlas/`` opens embedding-atlas (MIT, the optional extra
``difflens[atlas]``) on the same table the atlas view draws (``difflens.explore.data.atlas_frame``):
every point with its token, path text, jump, sentiment and prompt metadata,
placed by the longitude and latitude of its point on the sphere. Its app comes from the
installed package (no CDN) and runs its queries in the browser (DuckDB-WASM): the server
only sends the table, so no SQL from a request ever runs on the machine. Its map needs
WebGPU (with ``shader-f16``); where the browser lacks it, the table, search and filters
still work, and the explorer's own atlas view (plotly ``scattergl``) draws the map.
"""

import hashlib
import importlib.util
import threading
from collections.abc import MutableMapping
from typing import Any

from difflens.explore import data
from difflens.explore.runs import Run

MISSING = ("embedding-atlas is not installed: pip install 'difflens[atlas]' (or "
           "pip install embedding-atlas) to use this view; the atlas view draws the same points")
#: Columns the embedding-atlas table leaves out (coordinates on the sphere, row refs).
HIDDEN = ("x", "y", "z", "state_ref", "token_raw")


def available() -> bool:
    """Whether the embedding-atlas package is installed."""
    return importlib.util.find_spec("embedding_atlas") is not None


def atlas_table(run: Run) -> Any:
    """The table embedding-atlas shows: the atlas frame with ``map_x``/``map_y`` (longitude
    and latitude, degrees) and a row id."""
    frame = data.atlas_frame(run)
    df = frame.drop(columns=[c for c in HIDDEN if c in frame])
    df = df.rename(columns={"lon": "map_x", "lat": "map_y"}).reset_index(drop=True)
    df["__row_index__"] = range(len(df))
    return df


def build_app(run: Run) -> Any:
    """The embedding-atlas ASGI app of one trajectories run (its data in the browser)."""
    from pathlib import Path

    import embedding_atlas
    from embedding_atlas.data_source import DataSource
    from embedding_atlas.options import make_embedding_atlas_props
    from embedding_atlas.server import make_server

    df = atlas_table(run)
    props = make_embedding_atlas_props(row_id="__row_index__", x="map_x", y="map_y",
                                       text="token")
    key = hashlib.sha256(f"{run.root}:{len(df)}:{list(df.columns)}".encode()).hexdigest()
    source = DataSource(f"difflens-{key[:24]}", df, {"props": props})
    static = Path(embedding_atlas.__file__).parent / "static"
    return make_server(source, static_path=str(static), duckdb_uri=None)


class EmbeddingAtlasMount:
    """An ASGI app for ``/runs/{run}/embedding-atlas``: builds each run's embedding-atlas
    app on first use (the table is read then) and hands it the request."""

    def __init__(self, served: list[Run]) -> None:
        self.served = served
        self._apps: dict[int, Any] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import PlainTextResponse, RedirectResponse

        try:
            i = int(scope.get("path_params", {}).get("run", ""))
        except ValueError:
            i = -1
        if not 0 <= i < len(self.served):
            await PlainTextResponse("no such run", status_code=404)(scope, receive, send)
            return
        if not available():
            await PlainTextResponse(MISSING, status_code=501)(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"].endswith("/embedding-atlas"):
            # the app's assets are relative to its folder: it needs the trailing slash
            await RedirectResponse(scope["path"] + "/")(scope, receive, send)
            return
        try:
            app = await run_in_threadpool(self._app, i)
        except data.InputError as exc:
            await PlainTextResponse(str(exc), status_code=422)(scope, receive, send)
            return
        await app(scope, receive, send)

    def _app(self, i: int) -> Any:
        with self._lock:
            if i not in self._apps:
                self._apps[i] = build_app(self.served[i])
            return self._apps[i]
