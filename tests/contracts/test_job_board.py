"""The JobBoard contract over every installed provider.

The suite is the testing kit's (nember_core/testing/contracts/job_board.py): the one
a third party runs over their own JobBoard.
"""

from __future__ import annotations

from nember_core.testing import JobBoardContract

from .conftest import EveryInstalledProvider


class TestJobBoard(EveryInstalledProvider, JobBoardContract):
    pass
