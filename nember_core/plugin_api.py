"""The one module a Nember plugin imports: everything here is public and stays stable.

A plugin (a model family, or a store for one of the config's roles) implements hooks from
:mod:`nember_core.hookspecs` with ``@hookimpl`` and meets the core only through what this
module names: the hook marker, the roles' interfaces, the records they exchange, the errors it
may raise, and helpers for tree models and credentials. The first-party plugins in
``plugins/`` import nothing else from ``nember_core`` (a test checks it), and neither should a
third party's.

Storage roles are async so that network stores (PostgreSQL, Redis) fit without touching the
core. Model families are plain synchronous code: the core calls them in worker threads or
processes, never per message on the event loop, except the ``Predictor`` they build.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import attrs
import numpy as np

from .credentials import (
    VISIBLE_PREFIX_LENGTH,
    check_password,
    hash_password,
    key_hash,
    new_api_key,
    new_id,
)
from .errors import (
    AlreadyExists,
    InvalidData,
    ModelFileRejected,
    NemberError,
    NotFound,
    StoreUnavailable,
)
from .hookspecs import hookimpl
from .records import (
    Account,
    ApiKey,
    Charge,
    ConnectionUsage,
    LiveConnection,
    ModelKey,
    ModelMeta,
    NewApiKey,
    TrainingJob,
    utcnow,
)
from .together import Together
from .trees.ensemble import Tree, TreeEnsemble

__all__ = [
    # hooks and providers
    "hookimpl", "Provider", "PluginContext",
    # the roles
    "KeyStore", "BillingLedger", "ModelStore", "ConnectionRegistry", "CloseConnection",
    "ModelAnnouncements", "ModelAnnounced",
    "JobBoard", "ClaimedJob", "JOB_HEARTBEAT_SECONDS", "JOB_ORPHANED_AFTER", "JOB_MAX_ATTEMPTS",
    "ModelFamily", "Param", "Predictor", "RowPredictor",
    "RowsPredictor", "SumsDecider",
    # records
    "Account", "ApiKey", "NewApiKey", "ModelKey", "ModelMeta", "Charge", "ConnectionUsage",
    "LiveConnection", "TrainingJob", "utcnow",
    # errors
    "NemberError", "NotFound", "AlreadyExists", "InvalidData", "ModelFileRejected",
    "StoreUnavailable",
    # helpers for families
    "Tree", "TreeEnsemble", "decode_output", "class_probabilities", "softmax", "sigmoid",
    "margin_threshold", "first_largest",
    # helpers for key stores
    "new_id", "new_api_key", "key_hash", "hash_password", "check_password",
    "VISIBLE_PREFIX_LENGTH",
    # helpers for stores
    "Together",
]

T = TypeVar("T")


@attrs.frozen
class PluginContext:
    """What every storage plugin may use when it is created."""

    data_dir: Path  # where embedded implementations keep their files
    node: str  # this server's name, for stores shared by several nodes


@attrs.frozen
class Provider(Generic[T]):
    """One named implementation of a role, as the config's ``plugin:`` field names it.

    ``options``: an attrs class of the plugin's own keys in its config section (``None`` when
    it takes none), validated at start-up; raise ``ValueError`` in its validators to refuse a
    value. ``create(options, context)`` returns the implementation, or an awaitable of it.
    """

    name: str
    create: Callable[[Any, PluginContext], T | Awaitable[T]]
    options: type | None = None
    # The role's embedded default, used when the config names no plugin (one per role).
    default: bool = False
    # Do instances in several processes (``--workers``, several nodes) see the same state?
    shared_across_processes: bool = True
    # For a store that keeps a versioned schema in a shared database: create or upgrade it
    # without opening the store for service, and return what was done, one line each (what
    # ``nember db upgrade`` prints). Embedded stores upgrade their files when opened.
    upgrade: Callable[[Any, PluginContext], Awaitable[list[str]]] | None = None
    # Backups of a store that keeps its data in files on this machine (``nember backup DIR``,
    # ``nember restore DIR``; the CLI writes the manifest and checks it, the store only
    # copies). ``backup(options, context, folder)`` copies the store into ``folder`` (empty,
    # this role's own), consistent even while servers write to the store, without blocking
    # them long; it returns what it copied, one line each. ``restore(options, context,
    # folder, dry_run)`` puts such a copy in place of the store (readable by this user only)
    # and returns what it did, one line each; with ``dry_run`` it changes nothing and
    # returns what the store holds now that a restore would replace (``[]``: nothing, a
    # fresh store). The CLI asks every role's dry run before it restores anything, and
    # restores only when no server uses the stores. Raise ``NemberError`` (one line) when
    # it can't be done.
    backup: Callable[[Any, PluginContext, Path], Awaitable[list[str]]] | None = None
    restore: Callable[[Any, PluginContext, Path, bool], Awaitable[list[str]]] | None = None
    # For a provider without ``backup``, what ``nember backup`` says instead: how to back the
    # store up with its own tools, or why there is nothing to back up.
    backup_note: str = ""
    # Is a server using the store now? One line saying which (``nember restore`` refuses
    # then), else ``None``. A store that can't tell leaves this ``None``.
    in_use: Callable[[Any, PluginContext], Awaitable[str | None]] | None = None


class KeyStore(Protocol):
    """Accounts, their API keys and dashboard sessions. Secrets are stored only as hashes."""

    async def create_account(self, email: str, password: str) -> Account:
        """Raise :class:`AlreadyExists` when the email is taken."""

    async def account_by_email(self, email: str) -> Account | None: ...

    async def check_password(self, email: str, password: str) -> Account | None: ...

    async def create_key(self, account_id: str, name: str, scope: str) -> NewApiKey:
        """A new key with this scope (``predict``, ``read`` or ``manage``), already checked."""

    async def list_keys(self, account_id: str) -> list[ApiKey]: ...

    async def find_key(self, id_or_secret: str) -> ApiKey | None:
        """The key with this id, or whose secret this is, active or revoked."""

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, else ``None``."""

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke (idempotently) and return the key; :class:`NotFound` when there is none."""

    async def create_session(self, account_id: str, lifetime_seconds: float) -> str:
        """A new dashboard session; returns its token (stored only as a hash)."""

    async def session_account(self, token: str) -> Account | None:
        """The account of an unexpired session, else ``None``."""

    async def delete_session(self, token: str) -> None: ...

    async def revoked_among(self, key_ids: Iterable[str]) -> set[str]:
        """Which of these keys are revoked now: how servers notice revocations made elsewhere."""

    async def count_login_attempt(
        self, limits: Mapping[str, int], window_seconds: float
    ) -> str | None:
        """Count one login attempt against each subject (opaque strings: a hashed email, a
        hashed address), unless one of them already has ``limits[subject]`` attempts in the
        last ``window_seconds``; return the attempt's id, or ``None`` to refuse it.

        Checking and counting are one atomic step that every process and node sharing the
        store sees: attempts sent all at once, or spread over nodes, can't slip under a limit.
        """

    async def forget_login_attempt(self, attempt_id: str) -> None:
        """That attempt succeeded: it no longer counts against its subjects."""

    # Optional: without them, ``nember accounts list`` and ``nember accounts password`` say
    # the key store can't (and a changed password leaves sessions to expire by themselves).

    async def list_accounts(self) -> list[Account]:
        """Every account, oldest first."""

    async def set_password(self, account_id: str, password: str) -> None:
        """Store the new password (as a hash); :class:`NotFound` when there is no account."""

    async def delete_sessions(self, account_id: str) -> int:
        """End every dashboard session of the account; return how many were unexpired."""

    async def ping(self) -> None:
        """Return once the store answers, or raise: what ``GET /readyz`` asks of it."""

    async def close(self) -> None: ...


class BillingLedger(Protocol):
    """Charges and usage. ``charge`` must be durable when it returns."""

    async def charge(self, usage: ConnectionUsage, amount: Decimal, currency: str) -> Charge:
        """Charge the connection once (the charge and its open usage row, atomically)."""

    async def record_usage(self, usage: ConnectionUsage) -> None:
        """Store how the connection ended (closed_at, close code/reason, counts)."""

    async def charges(self, account_id: str) -> list[Charge]: ...

    async def usage(self, account_id: str) -> list[ConnectionUsage]: ...

    async def unclosed_usage(self, opened_before: datetime, limit: int,
                             opened_after: datetime | None = None) -> list[ConnectionUsage]:
        """The first ``limit`` usage rows without ``closed_at`` opened between the two times,
        by ``opened_at``, of every account: live connections, and those of a process killed
        outright. The next page starts after the last row's ``opened_at``."""

    async def close_abandoned(self, usage: ConnectionUsage) -> bool:
        """Store how a connection whose process died ended, unless its row is closed by now
        (its own process wins); ``True`` when this closed it."""

    async def ping(self) -> None:
        """Return once the store answers, or raise: what ``GET /readyz`` asks of it."""

    async def close(self) -> None: ...


class ModelStore(Protocol):
    """Trained model files and their metadata, by version."""

    async def save(self, meta: ModelMeta, artifact: bytes) -> ModelMeta:
        """Store atomically as the next version; return the meta with its version set.

        Version numbers are never reused, not even a deleted version's: servers tell a
        model's versions apart by their number."""

    async def latest(self, key: ModelKey) -> ModelMeta | None: ...

    async def latest_versions(self, keys: Sequence[ModelKey]) -> dict[ModelKey, int]:
        """The newest version number of each of these models that has one, in one call:
        how a server learns which of its cached models changed."""

    async def read(self, meta: ModelMeta) -> bytes: ...

    async def list(self, account_id: str) -> list[ModelMeta]:
        """Every version of every model of the account."""

    async def delete(self, meta: ModelMeta) -> None:
        """Remove one version (the previous one, if any, becomes the newest)."""

    async def generation(self) -> str:
        """A cheap token that changes whenever any model is saved or deleted.

        Servers poll it to pick up models trained elsewhere without polling every model.
        """

    async def ping(self) -> None:
        """Return once the store answers, or raise: what ``GET /readyz`` asks of it."""

    async def close(self) -> None: ...


# Closes one live connection with this close code and reason; handed to the registry with the
# connection, so a registry never touches a socket.
CloseConnection = Callable[[int, str], Awaitable[None]]

# Told that a model changed: its key, and its newest version (``None``: look it up, a version
# was deleted).
ModelAnnounced = Callable[[ModelKey, int | None], None]


class ConnectionRegistry(Protocol):
    """The live connections of every account, for limits, listing and closing."""

    async def add(self, conn: LiveConnection, limit: int, close: CloseConnection) -> bool:
        """Register ``conn`` unless its account already has ``limit`` live connections;
        ``close`` is how to close it when asked (from this process or another)."""

    async def remove(self, conn: LiveConnection) -> None: ...

    async def list(self, account_id: str) -> list[LiveConnection]: ...

    async def close_connection(self, connection_id: str, code: int, reason: str) -> bool:
        """Start closing a connection wherever it lives; False when there is no such one."""

    async def live_among(self, connection_ids: Iterable[str]) -> set[str]:
        """Which of these connections are live on some process now (any account)."""

    async def ping(self) -> None:
        """Return once the store answers, or raise: what ``GET /readyz`` asks of it."""

    async def close(self) -> None: ...


@runtime_checkable
class ModelAnnouncements(Protocol):
    """Optional, for a connection registry that several nodes share: word of new models.

    A server that stored or deleted a model version announces it; every server sharing the
    registry (the announcer too) hears of it within a moment and swaps the version it serves
    at once. Without it, servers still find changed models by polling
    ``ModelStore.generation`` every ``server.model_refresh_interval``; an announcement lost
    (the registry away) costs that interval, never a wrong answer.
    """

    async def announce_model(self, key: ModelKey, version: int | None) -> None:
        """Tell every server sharing the registry; raise when the registry can't be reached."""

    def on_model_announced(self, listener: ModelAnnounced) -> None:
        """Call ``listener`` (on the event loop, quickly: it must not block) for every
        announcement from now on, this process's own included."""


# The server rewrites each job it runs at least this often (its heartbeat, see
# ``JobBoard.heartbeat``).
JOB_HEARTBEAT_SECONDS = 5.0
# A running job whose claimer wrote nothing for this long is orphaned: its process or node
# died. Six missed heartbeats: a node busy for a while is not taken for dead.
JOB_ORPHANED_AFTER = 6 * JOB_HEARTBEAT_SECONDS
# A job is claimed at most this many times: orphaned on its last attempt, it fails.
JOB_MAX_ATTEMPTS = 2


@attrs.frozen
class ClaimedJob:
    """A job a server took from the board to run, with what it needs to run it."""

    job: TrainingJob  # as the board has it now: ``running``, stage ``starting``
    spec: dict[str, Any]  # what ``enqueue`` was given, as JSON gives it back
    data: bytes  # the training data ``enqueue`` was given, byte for byte
    attempt: int  # 1 the first time the job is claimed, 2 after it was re-queued once...


class JobBoard(Protocol):
    """The training jobs' queue, and their state as any server process or node reports it.

    A job is *enqueued* (``queued``) by the server that accepted it, with everything needed to
    run it (a spec and the data), so that any server sharing the board may run it. A server
    with a free training slot *claims* the next one: it becomes ``running`` under that
    claimer's name, a string unique to one server process (how a claimer's writes are told
    from a stale one's). The claimer reports its progress and that it is alive
    (``heartbeat``), at least every ``JOB_HEARTBEAT_SECONDS``, and *finishes* it
    (``succeeded`` or ``failed``), which drops the payload (the spec and data) and keeps the
    state. Only the claimer changes a running job, but for two things: a cancel request
    (``request_cancel``), which the claimer polls, and orphaning: a running job whose claimer
    wrote nothing for ``orphaned_after`` seconds goes back to the queue (attempts left), or
    fails with an error saying its server stopped (none left). A queued job never runs once
    ``withdraw`` took it back. Every method may be called from any number of processes and
    nodes at once; each change is atomic.
    """

    async def enqueue(self, job: TrainingJob, spec: Mapping[str, Any], data: bytes) -> None:
        """Store a new job as ``queued``, with its payload: ``spec`` (a JSON object: strings,
        numbers, booleans, ``None``, lists and objects) and ``data`` (any bytes; the server
        sends up to ``server.max_upload_size``, 64 MiB by default). The job's fields are
        stored as given (state ``queued``); from the call's return any claimer may take it."""

    async def claim(self, worker: str,
                    orphaned_after: float = JOB_ORPHANED_AFTER) -> ClaimedJob | None:
        """Take the next queued job for ``worker`` to run, or ``None`` when none is queued.

        First, every running job whose claimer wrote nothing for ``orphaned_after`` seconds
        is orphaned: claimed fewer than ``JOB_MAX_ATTEMPTS`` times (and with its payload),
        it is ``queued`` again (progress 0, stage ``queued``, its cancel request kept, its
        attempts counted); else it ends ``failed`` with an error saying its server stopped,
        and its payload is dropped. Then one job is taken, atomically: two claimers at once,
        in any processes or nodes, never take the same job. It becomes ``running`` (stage
        ``starting``, progress 0), claimed by ``worker``, its attempts counted one more, as
        written now (the first heartbeat).

        Which job: fair between accounts over every claimer sharing the board, as if each
        claim were the only one at that moment. Of the accounts with queued jobs, those with
        the fewest running jobs come first; among those, the account whose last claim is the
        oldest (one never claimed for: first); of that account, its oldest queued job
        (``created_at``, then ``id``). So waiting accounts take turns: an account that queued
        many jobs gets a slot that frees only after every other waiting account got one.
        """

    async def heartbeat(self, worker: str, jobs: Sequence[TrainingJob]) -> set[str]:
        """Store the ``progress`` and ``stage`` of these jobs that ``worker`` claimed and
        runs, and note that it is alive; return the ids among them that are no longer
        ``worker``'s (orphaned and re-queued or failed meanwhile, or unknown): the worker must
        stop running those, and its writes of them change nothing."""

    async def finish(self, worker: str, job: TrainingJob, keep: int) -> bool:
        """Store how a job ``worker`` claimed ended: its ``state`` (``succeeded`` or
        ``failed``), ``progress``, ``stage``, ``error``, ``model_id``, ``version`` and
        ``finished_at`` (now, when it is ``None``); drop its payload; keep at least the
        newest ``keep`` jobs (as ``write``). ``False``, and nothing written, when the job is
        no longer ``worker``'s."""

    async def release(self, worker: str, job_ids: Sequence[str]) -> None:
        """Give these running jobs of ``worker`` back to the queue (``queued``, progress 0,
        stage ``queued``), because the worker stops before they end (a server shutting down):
        the attempt doesn't count. Jobs that are not ``worker``'s running ones are left as
        they are."""

    async def withdraw(self, job_id: str, error: str) -> bool:
        """End a job that is still ``queued`` before any claimer takes it: ``failed`` with
        ``error``, stage ``withdrawn``, ``finished_at`` now, its payload dropped. ``False``
        (nothing changed) when it is not queued: running (see ``request_cancel``), ended, or
        unknown."""

    async def write(self, jobs: Sequence[TrainingJob], keep: int) -> None:
        """Store these jobs' state as given, without payload (nobody can claim them); keep
        at least the newest ``keep`` jobs (by ``created_at``), and always those whose payload
        the board holds (queued or running). For tools and tests; servers go through the
        methods above."""

    async def read(self, job_id: str) -> TrainingJob | None:
        """The job as last stored. As ``claim`` will treat it: a running job nobody wrote for
        ``JOB_ORPHANED_AFTER`` reads as ``queued`` (attempts and payload left) or ``failed``
        (an error saying its server stopped); a queued job without payload nobody wrote for as
        long (``write``'s) reads as failed too."""

    async def request_cancel(self, job_id: str) -> None:
        """Ask whichever process runs the job to stop it; survives its claimer's writes."""

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs someone asked to stop (polled by the process running them)."""

    async def ping(self) -> None:
        """Return once the store answers, or raise: what ``GET /readyz`` asks of it."""

    async def close(self) -> None: ...


# A trained model's single-row predictor: a 1 x n_features float64 array in, the raw output
# (class index or label for ``class``, value for ``reg``) out.
RowPredictor = Callable[[np.ndarray], Any]
# The same for many rows: an n x n_features array in, n outputs out.
RowsPredictor = Callable[[np.ndarray], Sequence[Any]]
# A tree model's single-row output from its ensemble's per-output sums (plain floats).
SumsDecider = Callable[[list[float]], Any]


@attrs.frozen
class Predictor:
    """What a family's ``predictor`` builds for one loaded model.

    ``one`` is called for every request, so it is the fastest correct single-row path the
    library allows. ``many`` answers concurrent requests in one batch (without it, batches go
    through the family's ``predict``). ``ensemble``: the trees ``one`` evaluates, for tree
    models; the server then compiles them to native code in the background and switches.
    ``proba``, for ``class`` models: one row in, the probability of each class index out (a
    1-D array summing to 1, see :func:`class_probabilities`); what a request asking for
    ``"probabilities"`` gets (PROTOCOL §7), and what evaluation scores calibration with.
    Without it, such requests get an error answer.

    ``decide``, for tree models: what ``one`` does with the ensemble's sums, given them as a
    list of floats (``one(row) == decide(ensemble(row[0]).tolist())``). Once the trees are
    compiled, the server then answers a row from plain floats to compiled code and back with
    no NumPy call at all: a few µs less per prediction than ``one``.
    """

    one: RowPredictor
    many: RowsPredictor | None = None
    ensemble: TreeEnsemble | None = None
    proba: RowPredictor | None = None
    decide: SumsDecider | None = None


@attrs.frozen
class Param:
    """A hyperparameter a family accepts, and the values it may take.

    ``kinds``: the JSON/YAML types allowed (``int`` also admits nothing fractional, ``float``
    admits integers too); ``minimum``/``maximum`` bound numbers; ``choices`` lists the strings
    allowed (only strings are checked against it); ``nullable`` admits ``None``. The library
    still checks what it checks; this is what a server lets through to it at all.
    """

    kinds: tuple[type, ...]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False


class ModelFamily(Protocol):
    """A kind of model (``DecisionTree``, ``XGBoost``...). Knows nothing of the server."""

    name: str  # as written in requests' ``model_name``
    library_version: str  # recorded in each model's metadata
    # The hyperparameters a user may set, and their bounds: anything else is refused before
    # training (a typo, a thread count that escapes the one-core worker, a parameter that
    # reads a file of the server).
    parameters: Mapping[str, Param]

    def fit(
        self, X: np.ndarray, y: np.ndarray, model_type: str, params: dict[str, Any]
    ) -> Any:
        """Fit on X (samples x features); for ``class``, y holds class indices 0..k-1."""

    def dumps(self, model: Any) -> bytes:
        """Serialize to a format that cannot run code when it is loaded."""

    def loads(self, data: bytes, model_type: str) -> Any:
        """Load what ``dumps`` made; raise :class:`ModelFileRejected` for anything else."""

    def predictor(self, model: Any, model_type: str) -> Predictor:
        """The model's fast paths (see :class:`Predictor`)."""

    def predict(self, model: Any, model_type: str, X: np.ndarray) -> Sequence[Any]:
        """Batch predictions through the library's own API (evaluation and tests)."""

    # Optional: ``warm_up()`` imports what ``loads`` and ``predictor`` need (XGBoost's import
    # takes 2 s). A server calls it once in a thread when it starts, so that the first
    # request for a model doesn't wait for the library to import.
    # Optional: ``trainable = False``: its models are imported (ONNX), never trained or demoed.


def class_probabilities(raw: np.ndarray) -> np.ndarray:
    """A classifier's output for one row as the probability of each class index: one value
    (a binary model's positive-class probability) becomes ``[1 - p, p]``; several are scaled
    to sum to 1 (one-vs-rest models' do not)."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    if raw.size == 1:
        p = float(raw[0])
        return np.array([1.0 - p, p])
    return raw / raw.sum()


def softmax(margins: np.ndarray) -> np.ndarray:
    """Raw multi-class scores (margins) as probabilities."""
    shifted = np.exp(np.asarray(margins, dtype=np.float64) - np.max(margins))
    return shifted / shifted.sum()


def sigmoid(margin: float) -> float:
    """A binary model's margin as its positive class's probability (no overflow)."""
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    small = math.exp(margin)
    return small / (1.0 + small)


def first_largest(values: list[float], offsets: list[float] | None = None) -> int:
    """The index of the largest value (of each plus its offset, when given), the first on a
    tie: NumPy's ``argmax`` of a list, for a ``Predictor``'s ``decide``."""
    if offsets is not None:
        values = [value + offset for value, offset in zip(values, offsets, strict=True)]
    return values.index(max(values))


def margin_threshold(positive: Callable[[float], bool]) -> float:
    """The largest margin that ``positive`` (a binary model's own decision on one margin,
    rounding included) calls negative: then ``margin > threshold`` is that decision, exactly,
    without the per-row sigmoid (a NumPy call on a one-element array costs microseconds).

    ``positive`` must be monotone, False at -inf and True at inf (every sigmoid over one
    half is); the search bisects the doubles between in their order, 64 calls at most.
    """
    low, high = _ordered(-math.inf), _ordered(math.inf)
    if positive(-math.inf) or not positive(math.inf):
        raise ValueError("the decision must be negative at -inf and positive at inf")
    while high - low > 1:  # positive(_float(low)) is False, positive(_float(high)) True
        middle = (low + high) // 2
        if positive(_float(middle)):
            high = middle
        else:
            low = middle
    return _float(low)


def _ordered(value: float) -> int:
    """A double as an integer in the doubles' order (-0.0 and 0.0 next to each other)."""
    bits = struct.unpack("<q", struct.pack("<d", value))[0]
    return bits if bits >= 0 else -(bits & 0x7FFF_FFFF_FFFF_FFFF) - 1


def _float(ordered: int) -> float:
    bits = ordered if ordered >= 0 else -(ordered + 1) | -0x8000_0000_0000_0000
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def decode_output(raw: np.ndarray, model_type: str) -> np.ndarray:
    """Turn a gradient-boosting booster's raw output into predictions.

    For ``class``: probabilities to class indices, as the libraries' sklearn wrappers do (one
    column: the positive class's probability; several: one per class). ``reg`` passes through.
    """
    if model_type == "reg":
        return raw
    if raw.ndim == 2:
        return raw.argmax(axis=1)
    return (raw > 0.5).astype(np.int64)
