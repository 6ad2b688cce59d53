"""The executor layer: `map_reduce(fn, units, merge)` on one process (`local`) or a Ray cluster (`ray`).

A unit is a small picklable description of work (a file path and a row range, a shard index,
a (model, dataset) cell), never an array: each task reads its own rows. `fn(unit)` returns a
small result (an accumulator's `state_dict`, a done-marker, a score row). The driver merges
results in unit order whatever order they finish in, so both backends give the same answer.

Ray is imported only by the `ray` backend; without the `iimm[ray]` extra nothing here touches it.
Ray's own task retries (`max_retries`) cover crashed workers; `retries` re-submits a unit whose
`fn` raised (an application error: a flaky filesystem, a file being written), driver-side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import InputError

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = 'pip install "iimm[ray]"'


@dataclass(frozen=True)
class Executor:
    """Where units run.

    kind: "local" (this process, in order) or "ray".
    address: Ray's address: None starts a local Ray with this machine's cores, "auto" joins a running
        cluster, "ray://host:10001" a remote one. Ignored by "local".
    retries: driver-level re-submissions of a unit whose function raised (application errors).
    """

    kind: str = "local"
    address: str | None = None
    retries: int = 1

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise InputError(f"unknown executor {self.kind!r}; pass --executor local or --executor ray")
        if self.retries < 0:
            raise InputError(f"retries must be 0 or more, got {self.retries}")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"


LOCAL = Executor()


def as_executor(executor: "Executor | str | None", address: str | None = None) -> Executor:
    """An `Executor` from one, a kind name ("local", "ray") or None (local)."""
    if executor is None:
        return LOCAL
    if isinstance(executor, Executor):
        return executor
    return Executor(str(executor), address)


@dataclass
class UnitFailure:
    """A unit whose function raised on every try: the unit, the exception, the tries made."""

    unit: Any
    error: BaseException
    tries: int


def map_units(fn: Callable[[Any], Any], units: Sequence, executor: "Executor | str | None" = None, *,
              resources: "dict | Callable[[Any], dict] | None" = None, on_result: Callable[[int, Any], None] | None = None,
              on_failure: Callable[[int, UnitFailure], None] | None = None, keep: bool = True) -> list:
    """fn(unit) for every unit; returns the results in unit order, a `UnitFailure` where a unit kept failing.

    keep: False returns None in place of each result (on_result has consumed it), so that large results
    merged as they come are not all held at once.

    A failing unit never stops the others. on_result(i, result) / on_failure(i, failure) are called on the
    driver as each unit finishes (in completion order under Ray).
    resources: Ray task options such as {"num_cpus": 1, "num_gpus": 1}, or unit -> options; ignored locally.
    """
    ex = as_executor(executor)
    units = list(units)
    if ex.is_ray:
        return _map_ray(fn, units, ex, resources or {}, on_result, on_failure, keep)
    out: list = []
    for i, unit in enumerate(units):
        result = _call_with_retries(fn, unit, ex.retries)
        _report(i, result, on_result, on_failure)
        out.append(result if keep or isinstance(result, UnitFailure) else None)
    return out


def map_reduce(fn: Callable[[Any], Any], units: Sequence, merge: Callable[[Any, Any], Any],
               executor: "Executor | str | None" = None, *, initial: Any = None,
               resources: dict | None = None, on_result: Callable[[int, Any], None] | None = None) -> Any:
    """merge(...merge(merge(initial, fn(u0)), fn(u1))..., fn(un)) in unit order; the first unit that keeps
    failing raises its error (a reduction is all or nothing). With initial None the first result starts it."""
    total = initial
    for result in all_or_raise(map_units(fn, units, executor, resources=resources, on_result=on_result)):
        total = result if total is None else merge(total, result)
    return total


def all_or_raise(results: list) -> list:
    """`map_units` results when every unit succeeded; else the first failed unit's error is raised."""
    for result in results:
        if isinstance(result, UnitFailure):
            raise result.error
    return results


def merge_tree(results: Sequence, merge: Callable[[Any, Any], Any]) -> Any:
    """Pairwise (balanced) merge of results: the shape a cluster's partial reductions take."""
    items = list(results)
    if not items:
        raise ValueError("merge_tree of nothing")
    while len(items) > 1:
        items = [merge(items[i], items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]


def _call_with_retries(fn, unit, retries: int):
    error: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            return fn(unit)
        except Exception as exc:  # noqa: BLE001 - reported per unit; the others go on
            error = exc
    return UnitFailure(unit, error, retries + 1)


def _report(i, result, on_result, on_failure) -> None:
    if isinstance(result, UnitFailure):
        if on_failure:
            on_failure(i, result)
    elif on_result:
        on_result(i, result)


# ---- Ray -------------------------------------------------------------------------------------------------

def ray_module():
    """`ray`, or an InputError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise InputError(f"--executor ray needs Ray; install it with {RAY_INSTALL_HINT}") from exc
    return ray


def ensure_ray(address: str | None = None):
    """Connect to Ray once per process: `address` None starts a local Ray with this machine's cores."""
    ray = ray_module()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot start or join Ray at {address or 'a new local cluster'}: {exc}; start one "
                             f"with `ray start --head` and pass --ray-address auto") from exc
    return ray


def ray_put(value, executor: "Executor | str | None"):
    """Under Ray: one object-store reference that every task shares; locally the value itself.
    Workers call `ray_get` on what they were given."""
    ex = as_executor(executor)
    if not ex.is_ray:
        return value
    return ensure_ray(ex.address).put(value)


def ray_get(value):
    """The value behind a `ray_put` reference (the value itself when it is not a Ray reference)."""
    if type(value).__name__ == "ObjectRef":
        import ray
        return ray.get(value)
    return value


def model_task_resources(executor: Executor, device: str, cpus: int = 1) -> dict:
    """Ray options of a task that runs a model: one GPU where it runs on CUDA (or `auto` on a cluster with
    GPUs), else `cpus` CPUs."""
    gpus = ensure_ray(executor.address).cluster_resources().get("GPU", 0)
    wants_gpu = str(device).startswith("cuda") or (str(device) == "auto" and gpus > 0)
    return {"num_gpus": 1, "num_cpus": cpus} if wants_gpu else {"num_cpus": cpus}


def _map_ray(fn, units, ex: Executor, resources, on_result, on_failure, keep: bool = True) -> list:
    ray = ensure_ray(ex.address)
    remote = ray.remote(_run_unit)
    fn_ref = ray.put(fn)  # the function (and what it closes over) goes to the object store once

    def submit(unit):
        options = resources(unit) if callable(resources) else resources
        return remote.options(max_retries=3, retry_exceptions=False, **options).remote(fn_ref, unit)

    pending = {submit(unit): (i, 1) for i, unit in enumerate(units)}
    out: list = [None] * len(units)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        i, tries = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - an application error (or a worker lost past its retries)
            error = getattr(exc, "cause", None) or exc
            if tries <= ex.retries:
                pending[submit(units[i])] = (i, tries + 1)
                continue
            result = UnitFailure(units[i], error, tries)
        _report(i, result, on_result, on_failure)
        out[i] = result if keep or isinstance(result, UnitFailure) else None
    return out


def _run_unit(fn, unit):
    return fn(unit)
