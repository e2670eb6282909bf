"""Forget requests: validation errors name what is wrong; splitting removes exactly the request."""

import pytest
import torch

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError, split_clients, validate
from fedunlearn.unlearning.base import UnlearningMethod, run_method
from fedunlearn.unlearning.controls import Retrain


def _clients():
    def make(cid, ids, labels):
        x = torch.zeros(len(ids), 2)
        return ClientData(cid, {"x": x, "y": torch.tensor(labels)}, torch.tensor(ids),
                          class_labels=torch.tensor(labels))

    return {0: make(0, [10, 11, 12], [0, 1, 1]), 1: make(1, [20, 21], [1, 2]), 2: make(2, [30], [2])}


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (ForgetRequest.forget_clients(7), "unknown client(s) [7]"),
        (ForgetRequest.forget_clients(0, 1, 2), "every client"),
        (ForgetRequest.forget_class(9), "class 9 is not present"),
        (ForgetRequest.forget_records([10, 99]), "[99] are not held"),
        (ForgetRequest.forget_records([]), "names no record"),
        (ForgetRequest("shard"), "unknown request kind"),
    ],
)
def test_bad_requests_are_rejected_with_the_offending_id(request_, needle):
    with pytest.raises(ForgetRequestError) as info:
        validate(request_, _clients())
    assert needle in str(info.value)


def test_client_that_never_trained_is_rejected():
    with pytest.raises(ForgetRequestError, match="never took part"):
        validate(ForgetRequest.forget_clients(2), _clients(), history_clients={0, 1})


def test_split_by_class_and_records():
    retained, forgotten = split_clients(_clients(), ForgetRequest.forget_class(1))
    assert sorted(forgotten) == [0, 1]
    assert retained[0].record_ids.tolist() == [10] and retained[1].record_ids.tolist() == [21]
    assert 1 not in torch.cat([d.class_labels for d in retained.values()]).tolist()
    retained, forgotten = split_clients(_clients(), ForgetRequest.forget_records([30, 11]))
    assert 2 not in retained  # its only record is forgotten
    assert forgotten[0].record_ids.tolist() == [11]


def test_method_granularity_is_enforced():
    class ClientOnly(UnlearningMethod):
        name = "client-only"

    with pytest.raises(ForgetRequestError, match="serves \\['client'\\] requests, not 'records'"):
        run_method(ClientOnly(), None, ForgetRequest.forget_records([10]))  # type: ignore[arg-type]
    assert "records" in Retrain.granularities
