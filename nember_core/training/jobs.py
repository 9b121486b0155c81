"""Training jobs started from the REST API: queued on the job board, run by whichever server
process has a free slot, each in a process of its own, watched for progress.

Submitting a job puts it on the ``JobBoard`` (``queued``) with everything needed to run it:
the training spec and the uploaded CSV's bytes. Every server process sharing the board (the
``--workers`` of one machine on SQLite, every node on PostgreSQL) claims queued jobs while it
has one of its ``server.training_workers`` slots free: it asks the board at once when a job is
submitted here or a slot frees, and otherwise every ``POLL_SECONDS``. The board picks the job,
atomically and fairly between accounts over every process (``JobBoard.claim``); this process
writes the CSV to a file of its own (deleted when the job ends) and trains in a process.

Training is CPU-bound and can take minutes, so it runs in worker processes: predictions on the
event loop never stall while a model trains. The job's process finds model families the same
way the server does (the entry-point group), sends progress back through a pipe of its own
and returns the trained model, which the server then stores through the configured model
store. A process of its own per job is what lets a job be stopped: when it runs past
``server.training_timeout``, when its owner cancels it (from any server process, through the
board), or when the board says the job is no longer this process's. It is also what caps a
job's memory: its process may map ``server.training_memory_mb`` at most (Linux), so a huge
upload or hyperparameters fail that job instead of filling the machine.

The running process writes each job's progress to the board, and at least every
``JOB_HEARTBEAT_SECONDS`` that it is alive. A process or node that dies stops writing: after
``JOB_ORPHANED_AFTER`` the next claim anywhere puts its jobs back in the queue for another
process (a job is tried ``JOB_MAX_ATTEMPTS`` times), or fails them with the board's message
after the last attempt. A server that stops gracefully gives its running jobs back to the
queue at once, and that attempt doesn't count.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import structlog

from nember_core.credentials import new_id
from nember_core.errors import NemberError, NotFound
from nember_core.metrics import FIGURES
from nember_core.plugin_api import JOB_HEARTBEAT_SECONDS, ClaimedJob, JobBoard
from nember_core.records import ModelKey, ModelMeta, TrainingJob, utcnow
from nember_core.worker_pool import die_with_parent

from .evaluation import Settings

log = structlog.get_logger("nember.jobs")

KEEP_FINISHED = 1000  # finished jobs remembered per server, oldest forgotten first
CANCELLED = "cancelled by its owner"
POLL_SECONDS = 0.5  # how often a process with a free slot looks for queued jobs
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
    skip_warmup: bool = False
    data_label: str | None = None  # how errors name the CSV
    returns: str | None = None  # the column of each row's next-bar return (the backtest's)
    evaluation: Settings = Settings()


class JobStopped(Exception):
    """The job was stopped from outside (cancelled, timed out); the message says why."""


def _worker_main(spec: TrainingSpec, to_server, parent: int, memory_mb: int) -> None:
    """A job's own process: train, send back its progress, then the outcome.

    Everything goes through the job's own pipe: a queue shared by every job would have a lock
    that a job's process stopped in the middle of a send holds for ever, stalling the other
    jobs' progress and the server's exit."""
    die_with_parent(parent)
    to_server.send(("progress", 0.01, "reading the data"))
    capped = _cap_memory(memory_mb)
    try:
        outcome = ("ok", _train(spec, to_server))
    except Exception as exc:
        if _ran_out_of_memory(exc):
            outcome = ("error", NemberError(out_of_memory(capped)))
        elif isinstance(exc, NemberError):
            outcome = ("error", exc)
        else:  # a plugin bug: its message, not its (maybe unpicklable) class
            outcome = ("error", RuntimeError(f"{type(exc).__name__}: {exc}"))
    to_server.send(outcome)


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


def _train(spec: TrainingSpec, to_server):
    from nember_core.plugins import installed_families

    from .dataset import read_csv, shown_as
    from .trainer import train

    def progress(fraction: float, stage: str) -> None:
        to_server.send(("progress", fraction, stage))

    family = installed_families()[spec.key.family]
    with shown_as(spec.data, spec.data_label):
        dataset = read_csv(spec.data, spec.target, spec.features, spec.skip_warmup,
                           spec.returns)
    return train(family, dataset, spec.key, spec.window, spec.params, progress,
                 spec.evaluation)


def _receive(connection, on_progress: Callable[[float, str], None]):
    """The job process's outcome, or None when it ended without one (killed); its progress
    reports go to ``on_progress`` on the way."""
    while True:
        try:
            message = connection.recv()
        except Exception:  # ended (EOFError, OSError), or killed half-way through a send
            return None
        if message[0] != "progress":
            return message
        on_progress(message[1], message[2])


class TrainingJobs:
    def __init__(self, model_store, board: JobBoard, workers: int = 1,
                 on_saved: Callable[[ModelMeta], Awaitable[None]] | None = None,
                 timeout: float = 3600.0, memory_mb: int = 0, node: str = "",
                 scratch: Path | None = None):
        self._store = model_store
        self._board = board
        # Told of each model stored, before its job is reported done: the servers serve it.
        self._on_saved = on_saved
        self._timeout = timeout  # seconds a job may train
        if memory_mb and not can_cap_memory():
            log.warning("training.memory_not_capped", platform=sys.platform,
                        why="server.training_memory_mb is enforced on Linux only")
            memory_mb = 0
        self._memory_mb = memory_mb  # MB a job's process may map; 0: no cap
        self._slots = workers  # jobs this process runs at once
        # Where a claimed job's CSV is written for its process (and deleted after).
        self._scratch = scratch or Path(tempfile.gettempdir())
        # This process's name as a claimer on the board: unique to it, and readable.
        self.worker = f"{node or socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[str, multiprocessing.process.BaseProcess] = {}
        self._runs: dict[str, asyncio.Task] = {}  # claimed jobs, until their run ends
        self._cancelled: dict[str, str] = {}  # jobs being stopped, and why
        self._lost: set[str] = set()  # no longer this process's (the board said so)
        self._jobs: dict[str, TrainingJob] = {}  # the jobs this process claimed
        self._changed: set[str] = set()  # running jobs whose progress the board doesn't have
        self._unreported: dict[str, TrainingJob] = {}  # ended; the board not told yet
        self._wake = asyncio.Event()  # a job was submitted here, or a slot freed
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """Start claiming jobs from the board and reporting on them (in a running loop)."""
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._claim_forever()),
                       asyncio.create_task(self._publish_forever())]

    def _progress_of(self, job_id: str) -> Callable[[float, str], None]:
        """What a job's receiving thread calls with each progress report."""
        loop = asyncio.get_running_loop()

        def report(fraction: float, stage: str) -> None:
            try:
                loop.call_soon_threadsafe(self._update, job_id, fraction, stage)
            except RuntimeError:  # the loop is closed: nobody asks any more
                pass

        return report

    def _update(self, job_id: str, fraction: float, stage: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.state == "running":
            job.progress, job.stage = round(fraction, 3), stage
            self._changed.add(job_id)

    async def get(self, account_id: str, job_id: str) -> TrainingJob:
        """A job this process runs or ran, or any other as the board has it."""
        job = self._jobs.get(job_id)
        if job is None or job_id in self._lost:
            job = await self._board.read(job_id)
        if job is None or job.account_id != account_id:
            raise NotFound(f"no training job {job_id}")
        return job

    async def cancel(self, account_id: str, job_id: str) -> TrainingJob:
        """Stop a queued or running job of the account, wherever it runs."""
        job = await self.get(account_id, job_id)
        if job.finished_at is not None:
            return job  # ended already: nothing to stop
        if job_id in self._jobs and job_id not in self._lost:
            self._stop(job_id, CANCELLED)
            return job
        if job.state == "queued" and await self._board.withdraw(job_id, CANCELLED):
            return await self._board.read(job_id) or job  # it never runs
        # Running elsewhere (or claimed just now): its process polls the board.
        await self._board.request_cancel(job_id)
        return job

    def _stop(self, job_id: str, why: str) -> None:
        job = self._jobs[job_id]
        if job.stage == "saving" or job.finished_at is not None:
            return  # trained already: too late to stop
        self._cancelled[job_id] = why
        job.stage = "cancelling"  # failed, with ``why``, once its run has ended
        self._changed.add(job_id)
        process = self._processes.get(job_id)
        if process is not None:
            process.terminate()  # its run sees the process end without an outcome

    async def submit(self, spec: dict[str, Any], key: ModelKey, data: bytes) -> TrainingJob:
        """Queue a job on the board: ``spec`` (``TrainingSpec``'s fields but the job's, the
        key and the data's path) and the CSV's bytes. Any server process may run it."""
        self.start()
        job = TrainingJob(id=new_id("job"), account_id=key.account_id, key=key,
                          created_at=utcnow())
        await self._board.enqueue(job, spec, data)  # any server process may claim it now
        self._wake.set()  # this one at once, if it has a free slot
        log.info("training.queued", job_id=job.id, family=key.family, bytes=len(data))
        return job

    async def _claim_forever(self) -> None:
        """Claim queued jobs while a slot is free: at once when woken, else every poll."""
        while True:
            self._wake.clear()
            while len(self._runs) < self._slots:
                try:
                    claimed = await self._board.claim(self.worker)
                except Exception as exc:  # the board is down: the next poll tries again
                    log.error("training.claim_failed", error=str(exc))
                    break
                if claimed is None:
                    break
                self._start(claimed)
                claimed = None  # its data lives on in its run only
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _start(self, claimed: ClaimedJob) -> None:
        job = claimed.job
        log.info("training.claimed", job_id=job.id, attempt=claimed.attempt, worker=self.worker)
        self._forget_old()
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, claimed.spec, claimed.data))
        self._runs[job.id] = task
        FIGURES.training_now["running"] = len(self._runs)

        def ended(_: asyncio.Task) -> None:
            self._runs.pop(job.id, None)
            FIGURES.training_now["running"] = len(self._runs)
            self._wake.set()  # a slot is free

        task.add_done_callback(ended)

    async def _publish_forever(self) -> None:
        beat = 0
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            beat += 1
            running = [job_id for job_id, job in self._jobs.items()
                       if job.finished_at is None and job_id not in self._lost]
            if beat % HEARTBEAT_FLUSHES == 0:  # and now and then the running ones: they are alive
                self._changed.update(running)
            try:
                if running:  # cancelled through another server process?
                    for job_id in await self._board.cancel_requested(running):
                        if job_id not in self._cancelled:
                            self._stop(job_id, CANCELLED)
                await self._publish()
            except Exception as exc:  # a locked or full disk: the next turn tries again
                log.error("training.publish_failed", error=str(exc))

    async def _publish(self) -> None:
        """Tell the board how jobs ended, then the running ones' progress (a heartbeat)."""
        for job in list(self._unreported.values()):
            del self._unreported[job.id]
            await self._report(job)
        changed = [self._jobs[i] for i in self._changed
                   if i in self._jobs and self._jobs[i].finished_at is None
                   and i not in self._lost]
        self._changed.clear()
        if not changed:
            return
        try:
            lost = await self._board.heartbeat(self.worker, changed)
        except BaseException:
            self._changed.update(job.id for job in changed)
            raise
        for job_id in lost:  # re-queued after this process seemed dead: another runs it
            log.warning("training.claim_lost", job_id=job_id, worker=self.worker)
            self._stop(job_id, "its claim on the job board was lost")
            self._lost.add(job_id)

    async def _report(self, job: TrainingJob) -> None:
        """How the job ended, to the board; kept for the next turn when it can't be told."""
        kept = False
        if job.id not in self._lost:
            try:
                kept = await self._board.finish(self.worker, job, KEEP_FINISHED)
            except Exception as exc:  # the publisher's next turn tries again
                log.error("training.publish_failed", error=str(exc))
                self._unreported[job.id] = job
                return
            except BaseException:  # cancelled: ``close`` tells the board
                self._unreported[job.id] = job
                raise
        if not kept:  # another process has it now: this one's outcome is not the job's
            self._lost.discard(job.id)
            self._jobs.pop(job.id, None)  # the board answers for it from now on
            log.warning("training.outcome_dropped", job_id=job.id, state=job.state)
            return
        FIGURES.training_jobs[job.state] = FIGURES.training_jobs.get(job.state, 0) + 1
        log.info("training.finished", job_id=job.id, state=job.state, family=job.key.family,
                 model_type=job.key.model_type, version=job.version)

    def _write_data(self, job_id: str, data: bytes) -> Path:
        self._scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{job_id}-", suffix=".csv", dir=self._scratch)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return Path(name)

    async def _in_process(self, job: TrainingJob, spec: TrainingSpec):
        """Train in a process of its own; JobStopped when it is stopped or runs too long."""
        receiving, sending = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(spec, sending, os.getpid(), self._memory_mb),
            name=f"nember-train-{job.id}", daemon=True,
        )
        with _one_thread():
            process.start()
        sending.close()  # the process's end now: its death reads as the end of the pipe
        self._processes[job.id] = process
        if job.id in self._cancelled:  # cancelled while it started
            process.terminate()
        try:
            outcome = await asyncio.wait_for(
                asyncio.to_thread(_receive, receiving, self._progress_of(job.id)), self._timeout)
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

    async def _train(self, job: TrainingJob, spec: dict[str, Any], data: bytes):
        path = None
        try:
            # Asked to stop before it was claimed (its previous claimer died meanwhile)?
            if job.id in await self._board.cancel_requested([job.id]):
                self._cancelled.setdefault(job.id, CANCELLED)
            if job.id in self._cancelled:
                raise JobStopped(self._cancelled[job.id])
            path = await asyncio.to_thread(self._write_data, job.id, data)
            del data  # on disk now: not held in this process for the whole run
            training = TrainingSpec(
                job_id=job.id, key=job.key, data=path, target=spec["target"],
                window=int(spec["window"]), features=spec.get("features"),
                params=dict(spec.get("params") or {}),
                skip_warmup=bool(spec.get("skip_warmup")), data_label=spec.get("data_label"),
                returns=spec.get("returns"),
                evaluation=Settings(**spec.get("evaluation", {})))
            return await self._in_process(job, training)
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

    async def _run(self, job: TrainingJob, spec: dict[str, Any], data: bytes) -> None:
        """Run a claimed job to its end and report it. Cancelled (the server stops), it
        reports nothing: ``close`` gives it back to the queue."""
        training = self._train(job, spec, data)
        del data  # the training coroutine holds it, until it is on disk
        try:
            trained = await training
            job.stage = "saving"
            self._changed.add(job.id)
            meta = await self._store.save(trained.meta, trained.artifact)
            job.model_id, job.version = meta.id, meta.version
            job.state, job.progress, job.stage = "succeeded", 1.0, "trained"
            if self._on_saved is not None:
                await self._on_saved(meta)
        except (NemberError, JobStopped) as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a worker crash or a plugin bug: say so, keep serving
            log.error("training.failed", job_id=job.id, error=repr(exc))
            job.state, job.error = "failed", f"training failed unexpectedly: {exc}"
        finally:
            self._cancelled.pop(job.id, None)
        job.finished_at = utcnow()
        # The outcome at once: a poll reaching another server process must see it too.
        await self._report(job)

    def _forget_old(self) -> None:
        finished = sorted(
            ((job.finished_at, job) for job in self._jobs.values()
             if job.finished_at is not None and job.id not in self._unreported),
            key=lambda pair: pair[0],
        )
        for _, job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]
            self._lost.discard(job.id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._runs.values()):
            task.cancel()
        await asyncio.gather(*self._runs.values(), return_exceptions=True)
        try:
            for job in list(self._unreported.values()):  # the outcomes not told yet
                del self._unreported[job.id]
                await self._report(job)
            stopped = [job_id for job_id, job in self._jobs.items()
                       if job.finished_at is None and job_id not in self._lost]
            if stopped:  # back to the queue, for another process or this one's successor
                await self._board.release(self.worker, stopped)
                log.info("training.released", jobs=stopped, worker=self.worker)
        except Exception as exc:  # they are orphaned then, and re-queued after a while
            log.error("training.publish_failed", error=str(exc))
