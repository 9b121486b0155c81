"""Nember: a self-hosted prediction gateway for trading bots.

Plugins write ``from nember_core import hookimpl`` and register through the ``nember``
entry-point group (see :mod:`nember_core.hookspecs`).
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("nember")

__all__ = ["hookimpl", "__version__"]
