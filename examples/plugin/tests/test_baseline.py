"""The Baseline family proves itself with Nember's testing kit (``pip install 'nember[testing]'``).

``pytest`` here runs the family contract (fit, files, fast paths, odd inputs, a pickle refused,
trained and served over a websocket) and one check of our own against a real server.
"""

import csv

import pytest
from nember_baseline import BaselineFamily

from nember_core.testing import FamilyContract, write_prices


class TestBaseline(FamilyContract):
    family = BaselineFamily()


@pytest.mark.asyncio
async def test_a_bot_gets_the_mean_move_whatever_it_sends(nember_server, nember_ws, tmp_path):
    prices = write_prices(tmp_path / "prices.csv", rows=50)
    await nember_server.train("Baseline", "reg", data=prices, target="move", features=["point1"])
    with prices.open() as rows:
        moves = [float(row["move"]) for row in csv.DictReader(rows)]
    for point in (9.0, -3.0):
        await nember_ws.send_json({"strat_name": "example_strategy", "model_name": "Baseline",
                                   "model_type": "reg", "DataPoints": [{"point1": point}]})
        answer = await nember_ws.receive_json()
        assert answer["type"] == "success"
        assert answer["prediction"] == pytest.approx(sum(moves) / len(moves))
