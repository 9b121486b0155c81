"""The answer every repeated frame gets is built without a dict (``protocol.existing``): it
must be the general answer byte for byte, whatever the label or value."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nember_core.serving import protocol

PREDICTIONS = (st.integers(min_value=-(2**63), max_value=2**64 - 1)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text() | st.booleans())


@given(seq=st.integers(min_value=1, max_value=2**63 - 1), prediction=PREDICTIONS)
def test_the_existing_model_answer_is_the_general_one_byte_for_byte(seq, prediction):
    assert protocol.existing(seq, prediction) == protocol.success(seq, False, prediction)
