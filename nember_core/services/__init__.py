"""The service layer: everything an account may do, with every rule and error, once.

The command line, the REST API, the dashboard and the demo are thin adapters over
:class:`Services`: they read their input, call one method, and present the result or the
:class:`~nember_core.errors.NemberError` it raised (a CLI line, an HTTP status). Nothing
here knows about HTTP or terminals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nember_core.config import Config
from nember_core.plugin_api import ModelFamily
from nember_core.stores import Stores
from nember_core.training.importing import class_labels

from .accounts import Accounts
from .connections import Connections
from .keys import Keys
from .models import ImportRequest, Models, TrainingRequest
from .usage import UsageReports

if TYPE_CHECKING:
    from nember_core.training.jobs import TrainingJobs

__all__ = ["ImportRequest", "Services", "TrainingRequest", "class_labels"]


class Services:
    def __init__(self, config: Config, families: dict[str, ModelFamily], stores: Stores,
                 jobs: TrainingJobs | None = None):
        self.config = config
        self.stores = stores
        self.accounts = Accounts(stores, config.dashboard.session_hours,
                                 config.dashboard.login_attempts_per_minute)
        self.keys = Keys(stores)
        self.models = Models(stores, families, jobs)
        self.connections = Connections(stores)
        self.usage = UsageReports(stores, config.billing.currency)
