"""Where model work runs: in this process (``local``) or on a Ray cluster (``RayEngine``).

The Ray engine is a pool of actors started by Ray Data's ``map_batches``. Each actor loads
every model of the job once, from the ``LoadSpec`` the driver
loaded it with, checks that its weights hash to the driver's, and then runs one function
per work item (a capture shard, a chunk of generations). The function is the same one the
local engine runs, so results do not depend on the engine or on the number of workers: the
work is split by the data (shards, chunks and per-prompt seeds), never by the workers.

Ray retries an item whose actor died (a killed process, a lost node) on a restarted actor;
the functions are written so a retried item ends with the same files as a first try.

The engine a command uses is passed explicitly (``capture(..., engine="ray")``) or set for
a block of code with ``use_engine``, which is how ``--engine ray`` reaches the sampling
inside themes, trajectories, collapse and control evaluation.
"""

import contextvars
import dataclasses
import importlib.util
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from difflens.errors import InputError
from difflens.models.loading import LoadedModel

T = TypeVar("T")

RAY_EXTRA = "pip install 'difflens[ray]'"


@dataclasses.dataclass(frozen=True)
class RayEngine:
    """Run model work on a Ray cluster (or a local one Ray starts on this machine)."""

    address: str | None = None
    """``None`` starts (or joins) a local cluster; ``"auto"`` joins the running cluster;
    ``"ray://head:10001"`` connects a client."""
    workers: int = 2
    """Actors, each holding its own copy of the models."""
    worker_gpus: float = 0.0
    """GPUs per actor (fractions share a GPU); 0 runs on CPU."""
    worker_cpus: float = 1.0
    """CPUs per actor."""
    torch_threads: int | None = None
    """Torch's intra-op threads in each actor (default: Ray's, one per CPU of the actor).
    On a CPU, matrix products sum in an order that depends on the thread count, so states
    equal a local run's to the last bit only when both use the same count (else to ~1e-6);
    on a GPU the count does not matter."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.worker_gpus < 0:
            raise InputError(f"--worker-gpus must be at least 0, got {self.worker_gpus}")
        if self.worker_cpus <= 0:
            raise InputError(f"worker_cpus must be positive, got {self.worker_cpus}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise InputError(f"torch_threads must be at least 1, got {self.torch_threads}")


Engine = RayEngine | None
"""``None`` is the local engine (this process)."""

_CURRENT: contextvars.ContextVar[RayEngine | None] = contextvars.ContextVar(
    "difflens_engine", default=None)


def resolve_engine(engine: "str | RayEngine | None") -> RayEngine | None:
    """``"local"``/``None`` -> local (or the engine set by ``use_engine``); ``"ray"`` ->
    a default ``RayEngine``; a ``RayEngine`` as given."""
    if isinstance(engine, RayEngine):
        return engine
    if engine is None:
        return _CURRENT.get()
    if engine == "local":
        return None
    if engine == "ray":
        return _CURRENT.get() or RayEngine()
    raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")


@contextmanager
def use_engine(engine: "str | RayEngine | None") -> Iterator[RayEngine | None]:
    """Run the model work inside the block on ``engine`` (where no call names its own)."""
    resolved = engine if isinstance(engine, RayEngine) else (
        None if engine in (None, "local") else resolve_engine(engine))
    token = _CURRENT.set(resolved)
    try:
        yield resolved
    finally:
        _CURRENT.reset(token)


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error that says how to install it."""
    if importlib.util.find_spec("ray") is None:
        raise InputError(f"--engine ray needs Ray, which is not installed: {RAY_EXTRA}")
    import ray
    import ray.data  # noqa: F401  (a subpackage: imported here so that ray.data resolves)

    return ray


def _connect(engine: RayEngine) -> Any:
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=engine.address, include_dashboard=False, log_to_driver=False)
    return ray


def _specs(models: dict[str, LoadedModel]) -> dict[str, dict[str, Any]]:
    out = {}
    for label, lm in models.items():
        spec = getattr(lm, "spec", None)
        if spec is None:
            raise InputError(
                f"model {lm.identity.name!r} was built in memory (wrap_model), so Ray workers "
                f"cannot load it: save it with save_pretrained and load_model the folder")
        out[label] = spec.to_dict()
    return out


class _Worker:
    """One Ray actor: loads the job's models once, then runs ``fn`` on each item."""

    def __init__(self, specs: dict[str, dict[str, Any]], weights: dict[str, str],
                 fn: Callable[[dict[str, LoadedModel], Any], Any], items: Sequence[Any],
                 torch_threads: int | None) -> None:
        import torch

        from difflens.models.loading import LoadSpec

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.models = {label: LoadSpec.from_dict(s).load() for label, s in specs.items()}
        for label, lm in self.models.items():
            if lm.identity.weights_sha256 != weights[label]:
                raise RuntimeError(
                    f"a Ray worker loaded {lm.identity.name!r} with other weights than the "
                    f"driver ({lm.identity.weights_sha256[:12]} vs {weights[label][:12]}); "
                    f"every node must see the same model files")
        self.fn, self.items = fn, items

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        # JSON here (exact for floats, NaN included), so a result reaches the driver as the
        # job built it, never converted by Ray Data into an Arrow column, and never pickled
        results = [json.dumps(self.fn(self.models, self.items[int(i)]), default=_plain)
                   for i in batch["item"]]
        return {"item": batch["item"], "result": results}


def _plain(obj: Any) -> Any:
    """JSON for the numpy values a job's result may hold: arrays as lists, scalars as
    Python numbers (float32 widens to float64 exactly)."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"a Ray job returned a {type(obj).__name__}, which is not JSON; return "
                    f"plain data (see map_with_models)")


def map_with_models(
    engine: RayEngine,
    models: dict[str, LoadedModel],
    fn: Callable[[dict[str, LoadedModel], T], Any],
    items: Sequence[T],
    *,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[fn(models, item) for item in items]``, each call on a Ray actor that holds the models.

    Args:
        engine: where to run.
        models: the driver's models; each actor loads its own copy from ``model.spec``.
        fn: a module-level function (Ray pickles it by reference). Its result travels as
            JSON: dicts, lists, strings, numbers (exact, NaN included), booleans, None and
            numpy arrays and scalars (which come back as lists and Python numbers).
        items: the work; small values (indices, ranges), each run once (retried on failure).
        on_result: called in the driver with ``(index, result as JSON gave it back)`` as
            each item finishes (in completion order).

    Returns:
        The results (as JSON gave them back), in the order of ``items``.
    """
    if not items:
        return []
    ray = _connect(engine)
    specs = _specs(models)
    weights = {label: lm.identity.weights_sha256 for label, lm in models.items()}
    results: dict[int, Any] = {}
    ctx = ray.data.DataContext.get_current()  # a dataset copies it when it is made
    saved = ctx.enable_progress_bars, ctx.execution_options.preserve_order
    ctx.enable_progress_bars, ctx.execution_options.preserve_order = False, False
    try:
        # from_items: the item indices live in the driver, so no read task competes with
        # the actors for CPUs (a range read would wait forever for a CPU the pool holds)
        ds = ray.data.from_items([{"item": i} for i in range(len(items))],
                                 override_num_blocks=len(items))
        mapped = ds.map_batches(
            _Worker, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(engine.workers, len(items))),
            fn_constructor_kwargs={"specs": specs, "weights": weights, "fn": fn,
                                   "items": list(items),
                                   "torch_threads": engine.torch_threads},
            num_cpus=engine.worker_cpus, num_gpus=engine.worker_gpus or None,
        )
        for row in mapped.iter_rows():
            i = int(row["item"])
            results[i] = json.loads(row["result"])
            if on_result is not None:
                on_result(i, results[i])
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved
    missing = [i for i in range(len(items)) if i not in results]
    if missing:
        raise RuntimeError(f"the Ray engine lost {len(missing)} work item(s): {missing[:5]}")
    return [results[i] for i in range(len(items))]


__all__ = ["Engine", "RayEngine", "map_with_models", "require_ray", "resolve_engine",
           "use_engine"]
