"""What the core expects of each pluggable role.

A plugin provides an implementation by returning a :class:`Provider` from the matching hook in
:mod:`nember_core.hookspecs`. Storage roles are async so that network-backed implementations
(PostgreSQL, Redis) fit without touching the core; model families are plain synchronous code
because they run in worker threads or processes, never on the event loop's hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
import numpy as np

from .records import (
    Account,
    ApiKey,
    Charge,
    ConnectionUsage,
    ModelKey,
    ModelMeta,
    NewApiKey,
)


@attrs.frozen
class Provider:
    """One named implementation of a role, as the config's ``plugin:`` field names it.

    ``options`` is an attrs class describing the plugin's own keys in its config section (or
    ``None`` when it takes none); ``create(options, context)`` returns the implementation,
    or an awaitable of it.
    """

    name: str
    create: Callable[[Any, PluginContext], Any]
    options: type | None = None


@attrs.frozen
class PluginContext:
    """What every storage plugin may use when it is created."""

    data_dir: Any  # pathlib.Path: where embedded implementations keep their files
    node: str  # this server's name, for registries shared by several nodes


class KeyStore(Protocol):
    """Accounts and their API keys. Keys are stored only as hashes."""

    async def create_account(self, email: str, password: str) -> Account:
        """Raise :class:`~nember_core.errors.AlreadyExists` when the email is taken."""

    async def account_by_email(self, email: str) -> Account | None: ...

    async def check_password(self, email: str, password: str) -> Account | None: ...

    async def create_key(self, account_id: str, name: str) -> NewApiKey: ...

    async def list_keys(self, account_id: str) -> list[ApiKey]: ...

    async def find_key(self, id_or_secret: str) -> ApiKey | None:
        """The key with this id, or whose secret this is, active or revoked."""

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, else ``None``."""

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke (idempotently) and return the key; NotFound when there is none."""

    async def create_session(self, account_id: str, lifetime_seconds: float) -> str:
        """A new dashboard session; returns its token (stored only as a hash)."""

    async def session_account(self, token: str) -> Account | None:
        """The account of an unexpired session, else ``None``."""

    async def delete_session(self, token: str) -> None: ...

    async def revoked_among(self, key_ids: Iterable[str]) -> set[str]:
        """Which of these keys are revoked now: how servers notice revocations made elsewhere."""

    async def close(self) -> None: ...


class BillingLedger(Protocol):
    """Charges and usage. ``charge`` must be durable when it returns."""

    async def charge(self, usage: ConnectionUsage, amount: Any, currency: str) -> Charge: ...

    async def record_usage(self, usage: ConnectionUsage) -> None:
        """Store how the connection ended (closed_at, close code/reason, counts)."""

    async def charges(self, account_id: str) -> list[Charge]: ...

    async def usage(self, account_id: str) -> list[ConnectionUsage]: ...

    async def close(self) -> None: ...


class ModelStore(Protocol):
    """Trained model files and their metadata, by version."""

    async def save(self, meta: ModelMeta, artifact: bytes) -> ModelMeta:
        """Store atomically as the next version; return the meta with its version set."""

    async def latest(self, key: ModelKey) -> ModelMeta | None: ...

    async def read(self, meta: ModelMeta) -> bytes: ...

    async def list(self, account_id: str) -> list[ModelMeta]:
        """Every version of every model of the account."""

    async def delete(self, meta: ModelMeta) -> None:
        """Remove one version (the previous one, if any, becomes the newest)."""

    async def generation(self) -> str:
        """A cheap token that changes whenever any model is saved or deleted.

        Servers poll it to pick up models trained elsewhere without polling every model.
        """

    async def close(self) -> None: ...


class ConnectionRegistry(Protocol):
    """The live connections of every account, for limits, listing and closing."""

    async def add(self, conn: Any, limit: int) -> bool:
        """Register ``conn`` (a LiveConnection) unless its account already has ``limit``."""

    async def remove(self, conn: Any) -> None: ...

    async def list(self, account_id: str) -> list[Any]: ...

    async def close_connection(self, connection_id: str, code: int, reason: str) -> bool:
        """Start closing a connection wherever it lives; False when there is no such one."""

    async def close(self) -> None: ...


# A trained model's single-row predictor: a 1 x n_features float64 array in, the raw output
# (class index for ``class``, value for ``reg``) out.
RowPredictor = Callable[[np.ndarray], Any]


class ModelFamily(Protocol):
    """A kind of model (``DecisionTree``, ``XGBoost``...). Knows nothing of the server."""

    name: str  # as written in requests' ``model_name``
    library_version: str  # recorded in each model's metadata
    file_suffix: str  # for the stored file, e.g. ``.ubj``

    def fit(
        self, X: np.ndarray, y: np.ndarray, model_type: str, params: dict[str, Any]
    ) -> Any:
        """Fit on X (samples x features); for ``class``, y holds class indices 0..k-1."""

    def dumps(self, model: Any) -> bytes:
        """Serialize to a format that cannot run code when it is loaded."""

    def loads(self, data: bytes, model_type: str) -> Any:
        """Load what ``dumps`` made; raise ModelFileRejected for anything else."""

    def predictor(self, model: Any, model_type: str) -> RowPredictor:
        """The fastest correct single-row predictor this library allows.

        It may carry a ``rows`` attribute: the same predictions for many rows at once (an
        n x features array in, n outputs out), used to answer concurrent requests in one
        batch; without it, batches go through ``predict``. A tree model's predictor may also
        carry ``ensemble``, the ``nember_core.tree_ensemble.TreeEnsemble`` it evaluates: the
        server then compiles those trees to native code in the background and switches to it
        (``nember_core.family_tools.with_rows`` attaches both).
        """

    def predict(self, model: Any, model_type: str, X: np.ndarray) -> Sequence[Any]:
        """Batch predictions through the library's own API (evaluation and tests)."""
