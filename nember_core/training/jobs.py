"""Training jobs started from the REST API: each in a process of its own, watched for progress.

Training is CPU-bound and can take minutes, so it runs in worker processes: predictions on the
event loop never stall while a model trains. A job waits for one of ``server.training_workers``
slots, shared fairly between accounts (``FairSlots``); its process finds model families the
same way the server does (the entry-point group), sends progress back through a queue and
returns the trained model, which the server then stores through the configured model store.
A process of its own per job is what lets a job be stopped: when it runs past
``server.training_timeout``, when its owner cancels it (from any server process, through the
job board), or when the server stops. It is also what caps a job's memory: its process may map
``server.training_memory_mb`` at most (Linux), so a huge upload or hyperparameters fail that
job instead of filling the machine. Job states are written to a ``JobBoard`` too, so that
every server process (``--workers``) can report them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog

from nember_core.credentials import new_id
from nember_core.errors import NemberError, NotFound
from nember_core.plugin_api import JOB_HEARTBEAT_SECONDS, JobBoard
from nember_core.records import ModelKey, TrainingJob, utcnow
from nember_core.worker_pool import die_with_parent

from .fair_slots import FairSlots

log = structlog.get_logger("nember.jobs")

KEEP_FINISHED = 1000  # finished jobs remembered per server, oldest forgotten first
CANCELLED = "cancelled by its owner"
STOPPED = "the server stopped while training; train again"
FLUSH_SECONDS = 0.5  # progress reaches the board at most this often
HEARTBEAT_FLUSHES = int(JOB_HEARTBEAT_SECONDS / FLUSH_SECONDS)  # running jobs rewritten as alive
ADVICE = "use less data, a smaller window or smaller hyperparameters"
# How native code reports a failed allocation: C++ (XGBoost, LightGBM), errno, the loader.
ALLOCATION_FAILED = ("bad_alloc", "Cannot allocate memory", "failed to map segment")
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


@attrs.frozen
class TrainingSpec:
    """Everything a worker needs, all picklable."""

    job_id: str
    key: ModelKey
    data: Path
    target: str
    window: int
    features: list[str] | None
    params: dict[str, Any]
    data_label: str | None = None  # how errors name the CSV


class JobStopped(Exception):
    """The job was stopped from outside (cancelled, timed out); the message says why."""


def _worker_main(spec: TrainingSpec, progress, result, parent: int, memory_mb: int) -> None:
    """A job's own process: train, send back the outcome."""
    die_with_parent(parent)
    # Starts the queue's feeder thread, whose stack must be mapped before the cap.
    progress.put((spec.job_id, 0.01, "reading the data"))
    capped = _cap_memory(memory_mb)
    try:
        outcome = ("ok", _train(spec, progress))
    except Exception as exc:
        if _ran_out_of_memory(exc):
            outcome = ("error", NemberError(out_of_memory(capped)))
        elif isinstance(exc, NemberError):
            outcome = ("error", exc)
        else:  # a plugin bug: its message, not its (maybe unpicklable) class
            outcome = ("error", RuntimeError(f"{type(exc).__name__}: {exc}"))
    result.send(outcome)


def can_cap_memory() -> bool:
    return sys.platform.startswith("linux")  # RLIMIT_AS elsewhere: missing or not enforced


def _cap_memory(memory_mb: int) -> int:
    """Cap this process's address space at ``memory_mb``; the MB capped, 0 if not. Every
    mapping counts, touched or not, so an allocation past the cap fails at once (MemoryError)
    and never takes the machine's RAM."""
    if not memory_mb or not can_cap_memory():
        return 0
    import resource

    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:  # the hard limit too: the job's code can't raise it again
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        return 0
    return limit // (1024 * 1024)


@contextlib.contextmanager
def _one_thread():
    """A process started meanwhile runs its math libraries on one thread. A job has one core
    (its hyperparameters can't ask for more), and their pools map a stack and a buffer (OpenBLAS:
    40 MB) per core of the machine, address space the cap counts: on 64 cores, 2.5 GB before
    any data. They size them when numpy is imported, before any code of ours runs in the new
    process, from the environment it inherits: so it is set for the start only."""
    saved = {name: os.environ.get(name) for name in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ran_out_of_memory(exc: BaseException | None) -> bool:
    """A failed allocation, as such or beneath what a library raised about it (not in our
    own errors' words: they may quote the user's data)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (
            not isinstance(exc, NemberError) and any(s in str(exc) for s in ALLOCATION_FAILED)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_memory(memory_mb: int) -> str:
    limit = f" (limit {memory_mb} MB, server.training_memory_mb)" if memory_mb else ""
    return f"training ran out of memory{limit}: {ADVICE}"


def died(exitcode: int | None, memory_mb: int) -> str:
    """Why a job whose process ended without an outcome failed. Killed by a signal: most
    likely the kernel's OOM killer, or a library that aborts when an allocation fails (some
    exit instead, as OpenBLAS does with code 1)."""
    limit = f" (limit {memory_mb} MB, server.training_memory_mb)" if memory_mb else ""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how, likely = f"killed by {name}", "most likely"
    else:
        how, likely = f"exit code {exitcode}", "perhaps"
    return (f"the training process died ({how}) before it finished, {likely} out of "
            f"memory{limit}: {ADVICE}")


def _train(spec: TrainingSpec, progress_queue):
    from nember_core.plugins import installed_families

    from .dataset import read_csv, shown_as
    from .trainer import train

    def progress(fraction: float, stage: str) -> None:
        progress_queue.put((spec.job_id, fraction, stage))

    family = installed_families()[spec.key.family]
    with shown_as(spec.data, spec.data_label):
        dataset = read_csv(spec.data, spec.target, spec.features)
    return train(family, dataset, spec.key, spec.window, spec.params, progress)


def _receive(connection):
    """The job process's outcome, or None when it ended without one (killed)."""
    try:
        return connection.recv()
    except (EOFError, OSError):
        return None


class TrainingJobs:
    def __init__(self, model_store, board: JobBoard, workers: int = 1,
                 on_saved: Callable[[ModelKey], None] | None = None,
                 timeout: float = 3600.0, memory_mb: int = 0):
        self._store = model_store
        self._board = board
        self._on_saved = on_saved  # told of each model stored (the cache loads it at once)
        self._timeout = timeout  # seconds a job may train
        if memory_mb and not can_cap_memory():
            log.warning("training.memory_not_capped", platform=sys.platform,
                        why="server.training_memory_mb is enforced on Linux only")
            memory_mb = 0
        self._memory_mb = memory_mb  # MB a job's process may map; 0: no cap
        self._context = multiprocessing.get_context("spawn")
        self._queue = self._context.Queue()
        self._slots = FairSlots(workers)
        self._processes: dict[str, multiprocessing.process.BaseProcess] = {}
        self._runs: dict[str, asyncio.Task] = {}
        self._cancelled: dict[str, str] = {}  # jobs being stopped, and why
        self._queued: set[str] = set()  # waiting for a slot
        self._jobs: dict[str, TrainingJob] = {}
        self._changed: set[str] = set()  # jobs whose state the board doesn't have yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader = threading.Thread(target=self._read_progress, daemon=True)
        self._reader.start()
        self._tasks: set[asyncio.Task] = set()
        self._publisher: asyncio.Task | None = None

    def _read_progress(self) -> None:
        while True:
            try:
                item = self._queue.get()
            except (EOFError, OSError, ValueError):
                return
            if item is None:
                return
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._update, *item)

    def _update(self, job_id: str, fraction: float, stage: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.state == "running":
            job.progress, job.stage = round(fraction, 3), stage
            self._changed.add(job_id)

    async def get(self, account_id: str, job_id: str) -> TrainingJob:
        """A job of this process, or one another server process runs or ran."""
        job = self._jobs.get(job_id) or await self._board.read(job_id)
        if job is None or job.account_id != account_id:
            raise NotFound(f"no training job {job_id}")
        return job

    async def cancel(self, account_id: str, job_id: str) -> TrainingJob:
        """Stop a queued or running job of the account, wherever it runs."""
        job = await self.get(account_id, job_id)
        if job.finished_at is not None:
            return job  # ended already: nothing to stop
        if job_id not in self._jobs:  # another server process runs it: it reads the board
            await self._board.request_cancel(job_id)
            return job
        self._stop(job_id, CANCELLED)
        return job

    def _stop(self, job_id: str, why: str) -> None:
        job = self._jobs[job_id]
        if job.stage == "saving":
            return  # trained already: too late to stop
        self._cancelled[job_id] = why
        job.stage = "cancelling"  # failed, with ``why``, once its run has ended
        self._changed.add(job_id)
        process = self._processes.get(job_id)
        if process is not None:
            process.terminate()  # its run sees the process end without an outcome
        elif job_id in self._queued:
            self._runs[job_id].cancel()  # still waiting for a slot

    async def _publish_forever(self) -> None:
        beat = 0
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            beat += 1
            unfinished = [j.id for j in self._jobs.values() if j.finished_at is None]
            if beat % HEARTBEAT_FLUSHES == 0:  # and now and then the running ones: they are alive
                self._changed.update(unfinished)
            try:
                if unfinished:  # cancelled through another server process?
                    for job_id in await self._board.cancel_requested(unfinished):
                        if job_id not in self._cancelled:
                            self._stop(job_id, CANCELLED)
                await self._publish()
            except Exception as exc:  # a locked or full disk: the next turn tries again
                log.error("training.publish_failed", error=str(exc))

    async def _publish(self) -> None:
        changed = [self._jobs[i] for i in self._changed if i in self._jobs]
        self._changed.clear()
        if changed:
            await self._board.write(changed, KEEP_FINISHED)

    async def submit(self, spec_args: dict[str, Any], key: ModelKey,
                     cleanup: Path | None) -> TrainingJob:
        self._loop = asyncio.get_running_loop()
        if self._publisher is None:
            self._publisher = asyncio.create_task(self._publish_forever())
        job = TrainingJob(id=new_id("job"), account_id=key.account_id, key=key,
                          created_at=utcnow())
        self._forget_old()
        self._jobs[job.id] = job
        await self._board.write([job], KEEP_FINISHED)  # any server process knows it from now
        spec = TrainingSpec(job_id=job.id, key=key, **spec_args)
        task = asyncio.create_task(self._run(job, spec, cleanup))
        self._tasks.add(task)
        self._runs[job.id] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._runs.pop(job.id, None))
        return job

    async def _in_process(self, job: TrainingJob, spec: TrainingSpec):
        """Train in a process of its own; JobStopped when it is stopped or runs too long."""
        receiving, sending = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(spec, self._queue, sending, os.getpid(), self._memory_mb),
            name=f"nember-train-{job.id}", daemon=True,
        )
        with _one_thread():
            process.start()
        sending.close()  # the process's end now: its death reads as the end of the pipe
        self._processes[job.id] = process
        if job.id in self._cancelled:  # cancelled while it started
            process.terminate()
        try:
            outcome = await asyncio.wait_for(asyncio.to_thread(_receive, receiving),
                                             self._timeout)
        except asyncio.TimeoutError:
            raise JobStopped(f"training took longer than the limit of {self._timeout:g} s "
                             "(server.training_timeout)") from None
        finally:
            if process.is_alive():
                process.terminate()
            await asyncio.to_thread(process.join, 10)
            receiving.close()
            self._processes.pop(job.id, None)
        if job.id in self._cancelled:
            raise JobStopped(self._cancelled[job.id])
        if outcome is None:  # it died: killed, or a library ended it
            log.warning("training.process_died", job_id=job.id, exitcode=process.exitcode)
            raise NemberError(died(process.exitcode, self._memory_mb))
        kind, value = outcome
        if kind == "error":
            raise value
        return value

    async def _run(self, job: TrainingJob, spec: TrainingSpec, cleanup: Path | None) -> None:
        try:
            self._queued.add(job.id)
            try:
                await self._slots.acquire(job.account_id)
            finally:
                self._queued.discard(job.id)
            try:
                if job.id in self._cancelled:
                    raise JobStopped(self._cancelled[job.id])
                job.state, job.stage = "running", "starting"
                self._changed.add(job.id)
                trained = await self._in_process(job, spec)
            finally:
                self._slots.release()
            job.stage = "saving"
            self._changed.add(job.id)
            meta = await self._store.save(trained.meta, trained.artifact)
            job.model_id, job.version = meta.id, meta.version
            job.state, job.progress, job.stage = "succeeded", 1.0, "trained"
            if self._on_saved is not None:
                self._on_saved(job.key)
        except (NemberError, JobStopped) as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a worker crash or a plugin bug: say so, keep serving
            log.error("training.failed", job_id=job.id, error=repr(exc))
            job.state, job.error = "failed", f"training failed unexpectedly: {exc}"
        except asyncio.CancelledError:
            job.state, job.error = "failed", self._cancelled.get(job.id, STOPPED)
            if job.id not in self._cancelled:  # the server is stopping
                raise
        finally:
            job.finished_at = utcnow()
            self._cancelled.pop(job.id, None)
            self._changed.add(job.id)
            if cleanup is not None:
                cleanup.unlink(missing_ok=True)
        try:  # the outcome at once: a poll reaching another server process must see it too
            await self._board.write([job], KEEP_FINISHED)
        except Exception as exc:  # the publisher's next turn tries again
            log.error("training.publish_failed", error=str(exc))
        log.info("training.finished", job_id=job.id, state=job.state, family=job.key.family,
                 model_type=job.key.model_type, version=job.version)

    def _forget_old(self) -> None:
        finished = sorted(
            (job for job in self._jobs.values() if job.finished_at is not None),
            key=lambda job: job.finished_at,
        )
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]

    async def close(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._publish()  # the last states, stopped jobs included
        except Exception as exc:
            log.error("training.publish_failed", error=str(exc))
        try:
            self._queue.put(None)  # the reader's signal to stop...
        except (OSError, ValueError):
            pass
        else:  # ...which it must have read before the queue closes under it
            await asyncio.to_thread(self._reader.join, 5)
        self._queue.close()
