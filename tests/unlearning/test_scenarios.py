"""Scenario.restricted: the shrunk copy the Flower app and `bench --num-clients/--rounds` share."""

import pytest

from fedunlearn.federated.requests import ForgetRequestError
from fedunlearn.unlearning.scenarios import build_scenario


def test_restricted_is_a_copy_with_the_first_clients_and_new_rounds():
    scenario = build_scenario("digits-backdoor", seed=1)
    small = scenario.restricted(num_clients=4, rounds=3, record_every=2)
    assert sorted(small.clients) == [0, 1, 2, 3] and len(scenario.clients) == 10
    assert (small.config.rounds, small.config.record_every) == (3, 2)
    assert scenario.config.rounds == 20 and small.config.seed == scenario.config.seed == 1
    assert small.request == scenario.request and small.clients[2] is scenario.clients[2]
    assert scenario.restricted().clients == scenario.clients  # zeros keep everything


def test_restricted_request_must_fit_the_kept_clients():
    scenario = build_scenario("digits-backdoor")
    assert scenario.restricted(num_clients=3, forget_clients=(1, 2)).request.clients == (1, 2)
    with pytest.raises(ForgetRequestError, match=r"unknown client\(s\) \[4\]"):
        scenario.restricted(num_clients=3, forget_clients=(4,))
    with pytest.raises(ForgetRequestError, match="every client"):
        scenario.restricted(num_clients=1)
    with pytest.raises(ValueError, match="has 10 clients"):
        scenario.restricted(num_clients=11)
