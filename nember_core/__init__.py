"""Nember: a self-hosted prediction gateway for trading bots.

The packages show the architecture: ``serving`` (a frame's way from socket to answer),
``trees`` (tree models as arrays and native code), ``training`` (datasets, fitting, jobs),
``services`` (what accounts, keys, models, connections and usage allow, with every rule),
``web`` (REST API and dashboard) and ``app`` (config, plugins, server, CLI). Plugins import
:mod:`nember_core.plugin_api` and nothing else.
"""

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
