"""Where the independent parts of a job run: local processes (the default) or a Ray cluster.

A job is a list of picklable work items and a module-level function that turns one item
into one picklable result. The executor only runs them; the caller keeps every decision that
makes the output deterministic (how the input is split, in which order results are
committed), so a build gives the same bytes whichever executor ran it.

Choosing one:  --executor local|ray   or FORGE_EXECUTOR
               --ray-address auto|HOST:PORT   or RAY_ADDRESS   (no address: a private
               Ray instance on this machine, sized to --workers)

Ray is optional (pip install 'forge-instruct[ray]'); nothing here imports it unless the ray
executor is chosen. Ray retries a task whose worker or node dies (`RAY_RETRIES` times); an
error raised by forge's own code (a bad record file, a full disk) is not retried, and it
reaches the caller as the original exception, so the CLI still prints one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from forge.errors import ForgeError

EXECUTORS = ("local", "ray")
RAY_RETRIES = 3
FORWARDED_ENV = ("FORGE_", "HF_HUB_OFFLINE", "HF_HOME", "HF_ENDPOINT")


class ExecutorError(ForgeError):
    pass


@dataclass
class Executor:
    """name: local | ray; workers: processes for local (None: one per core); address: the
    Ray cluster to join (None: start a private one)."""

    name: str = "local"
    workers: int | None = None
    address: str | None = None

    def map(
        self,
        fn: Callable,
        items: list,
        *,
        done: Callable[[object], None] | None = None,
        keep: bool = True,
    ) -> list:
        """fn(item) for every item; results in item order. `done(result)` is called as each
        result arrives (progress, or keeping a finished part at once); keep=False keeps no
        result (done consumes them), so large results never pile up here. Local: a pool of
        `workers` spawned processes (this process alone when that is one); Ray: one task each."""
        if self.name == "ray":
            return list(self._ray_map(fn, items, done, keep))
        n = min(self.workers or os.cpu_count() or 1, len(items))
        if n <= 1:
            results = []
            for item in items:
                r = fn(item)
                if done:
                    done(r)
                results.append(r if keep else None)
            return results
        return self._process_map(fn, items, n, done, keep)

    def _process_map(self, fn, items, n, done, keep) -> list:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: polars and Arrow keep thread pools that do not survive a fork
        with ProcessPoolExecutor(
            n, mp_context=mp.get_context("spawn"), initializer=start_worker, initargs=(os.getpid(),)
        ) as pool:
            results = []
            for r in pool.map(fn, items):
                if done:
                    done(r)
                results.append(r if keep else None)
            return results

    def _ray_map(self, fn, items, done, keep) -> Iterator:
        ray = connect_ray(self.address, self.workers)
        # workers of a running cluster do not inherit this process's environment: forge's own
        # settings travel with each task (not as a Ray runtime_env, which would start fresh
        # workers for every job instead of reusing the warm ones)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        task = ray.remote(max_retries=RAY_RETRIES, retry_exceptions=False)(_in_env)
        refs = [task.remote(fn, env, item) for item in items]
        order = {ref.hex(): i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = refs  # a reference dropped once its result is read frees it in the object store
        del refs
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    r = ray.get(ref)
                    if done:
                        done(r)
                    results[order[ref.hex()]] = r if keep else None
                    del r
        except ray.exceptions.RayTaskError as e:
            for ref in pending:
                ray.cancel(ref, force=True)
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if isinstance(cause, (ForgeError, OSError)):
                raise cause from None  # forge's own error: the one line the user should see
            raise ExecutorError(f"a Ray task failed: {str(e).splitlines()[0]}") from e
        except ray.exceptions.RayError as e:
            # retries exhausted: the worker or node kept dying
            raise ExecutorError(
                f"a Ray task failed after {RAY_RETRIES} retries: {str(e).splitlines()[0]}"
            ) from e
        return iter(results)


def _in_env(fn: Callable, env: dict, item):
    """Run fn(item) in a Ray worker with the driver's forge settings (and none left over from
    an earlier job that this worker served)."""
    for k in [k for k in os.environ if k.startswith(FORWARDED_ENV) and k not in env]:
        del os.environ[k]
    os.environ.update(env)
    return fn(item)


def choose(name: str | None = None, address: str | None = None, workers: int | None = None) -> Executor:
    """The executor the flags or the environment ask for (flags win)."""
    name = name or os.environ.get("FORGE_EXECUTOR") or "local"
    if name not in EXECUTORS:
        raise ExecutorError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name == "local" and address:
        raise ExecutorError("--ray-address goes with --executor ray")
    if name == "ray":
        address = address or os.environ.get("RAY_ADDRESS") or None
    return Executor(name, workers, address)


def connect_ray(address: str | None, workers: int | None):
    """Join the cluster at `address`, or start a private one here; reuse a live connection."""
    try:
        import ray
    except ImportError as e:
        raise ExecutorError(
            "--executor ray needs Ray: pip install 'forge-instruct[ray]' (or pip install ray)"
        ) from e
    if ray.is_initialized():
        return ray
    if address and address != "auto" and "://" not in address:
        _reachable(address)  # Ray itself retries an absent cluster for minutes, printing C++ logs
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                # the object store only carries small part results: keep its share of RAM small
                object_store_memory=128 << 20,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a private Ray instance"
        raise ExecutorError(f"cannot start or join Ray at {where}: {str(e).splitlines()[0]}") from e
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except ValueError:
        raise ExecutorError(f"--ray-address must be auto or HOST:PORT, got {address!r}") from None
    except OSError as e:
        raise ExecutorError(
            f"cannot start or join Ray at {address}: nothing answers there ({e.strerror or e}); "
            "start the cluster (ray start --head) or fix --ray-address"
        ) from None


def start_worker(parent: int) -> None:
    """Worker initializer: Arrow allocates from the C library's malloc, and the worker exits as
    soon as the parent is gone (kill -9 included) instead of working on as an orphan.

    Arrow's default allocator (mimalloc) keeps what a worker frees for reuse; a worker that
    reads and drops one batch after another then holds 30-50 MB more than it uses (dedup's
    signing step at 250k records, in the same CPU time). Parent death re-parents us, so
    getppid() changes; the parent's pid comes as an argument in case it died before this ran."""
    import threading
    import time

    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="forge-parent-watch").start()
