"""The explorer: a local, read-only web app over difflens run folders (``difflens explore``).

``create_app`` builds the Starlette app; ``serve`` runs it with uvicorn on
127.0.0.1 unless told otherwise. ``runs`` reads run folders and
pages of their Parquet tables (DuckDB), ``data`` the atlas and token
diff data, ``views`` writes the pages.
"""

from difflens.explore.app import ExploreConfig, create_app, serve

__all__ = ["ExploreConfig", "create_app", "serve"]
