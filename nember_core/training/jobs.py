"""Training jobs started from the REST API: run in a process pool, watched for progress.

Training is CPU-bound and can take minutes, so it runs in worker processes: predictions on the
event loop never stall while a model trains. Workers find model families the same way the
server does (the entry-point group); they send progress back through a queue and return the
trained model, which the server then stores through the configured model store. Job states
are written to a ``JobBoard`` too, so that every server process (``--workers``) can report
them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
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
from nember_core.worker_pool import spawn_pool, stop_pool

log = structlog.get_logger("nember.jobs")

KEEP_FINISHED = 1000  # finished jobs remembered per server, oldest forgotten first
FLUSH_SECONDS = 0.5  # progress reaches the board at most this often
HEARTBEAT_FLUSHES = int(JOB_HEARTBEAT_SECONDS / FLUSH_SECONDS)  # running jobs rewritten as alive


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


_progress_queue: Any = None  # set in each worker process by _init_worker


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _train_in_worker(spec: TrainingSpec):
    """Runs in a worker process."""
    from nember_core.plugins import installed_families

    from .dataset import read_csv, shown_as
    from .trainer import train

    def progress(fraction: float, stage: str) -> None:
        _progress_queue.put((spec.job_id, fraction, stage))

    family = installed_families()[spec.key.family]
    with shown_as(spec.data, spec.data_label):
        dataset = read_csv(spec.data, spec.target, spec.features)
    return train(family, dataset, spec.key, spec.window, spec.params, progress)


class TrainingJobs:
    def __init__(self, model_store, board: JobBoard, workers: int = 1,
                 on_saved: Callable[[ModelKey], None] | None = None):
        self._store = model_store
        self._board = board
        self._on_saved = on_saved  # told of each model stored (the cache loads it at once)
        self._queue = multiprocessing.get_context("spawn").Queue()
        self._pool = spawn_pool(workers, _init_worker, (self._queue,))
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

    async def _publish_forever(self) -> None:
        beat = 0
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            beat += 1
            if beat % HEARTBEAT_FLUSHES == 0:  # and now and then the running ones: they are alive
                self._changed.update(j.id for j in self._jobs.values() if j.finished_at is None)
            try:
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
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: TrainingJob, spec: TrainingSpec, cleanup: Path | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            job.state, job.stage = "running", "starting"
            self._changed.add(job.id)
            trained = await loop.run_in_executor(self._pool, _train_in_worker, spec)
            job.stage = "saving"
            self._changed.add(job.id)
            meta = await self._store.save(trained.meta, trained.artifact)
            job.model_id, job.version = meta.id, meta.version
            job.state, job.progress, job.stage = "succeeded", 1.0, "trained"
            if self._on_saved is not None:
                self._on_saved(job.key)
        except NemberError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a worker crash or a plugin bug: say so, keep serving
            log.error("training.failed", job_id=job.id, error=repr(exc))
            job.state, job.error = "failed", f"training failed unexpectedly: {exc}"
        except asyncio.CancelledError:  # the server is stopping
            job.state, job.error = "failed", "the server stopped while training; train again"
            raise
        finally:
            job.finished_at = utcnow()
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
        stop_pool(self._pool)
        try:
            self._queue.put(None)  # the reader's signal to stop...
        except (OSError, ValueError):
            pass
        else:  # ...which it must have read before the queue closes under it
            await asyncio.to_thread(self._reader.join, 5)
        self._queue.close()
