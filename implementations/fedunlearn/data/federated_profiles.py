"""Fictitious people over federated clients: the data of the language-model scenarios.

[`profile_clients`][fedunlearn.data.federated_profiles.profile_clients] makes seeded people
([`make_profiles`][fedunlearn.data.profiles.make_profiles]), spreads their question-answer records
over clients **by owner** (a person lives on exactly one client, so "forget this client" and
"forget this person" are both expressible) and keeps further people that nobody trains on. The
records are encoded by the task passed in (its tokenizer and length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedunlearn.data.profiles import Profile, QARecord, make_profiles, qa_records
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.partition import by_owner


@dataclass(frozen=True)
class ProfileFederation:
    """People spread over clients by owner, plus held-out people nobody trained on.

    Attributes:
        clients: Client id -> data.
        people: Every federated person.
        client_people: Client id -> ids of its people.
        heldout: Records of held-out people (never in any client).
        records: Record id -> record, for every federated and held-out record.
    """

    clients: dict[int, ClientData]
    people: list[Profile]
    client_people: dict[int, list[int]]
    heldout: list[QARecord]
    records: dict[int, QARecord]


def profile_clients(
    task, num_clients: int = 4, people_per_client: int = 5,
    heldout_people: int = 20, seed: int = 0,
) -> ProfileFederation:
    """Make fictitious people and partition their records over clients by owner.

    Args:
        task: Encodes the records: any object with ``records_data(client_id, records)``, such as
            [`LoraCausalLMTask`][fedunlearn.federated.lora_task.LoraCausalLMTask].
        num_clients: Clients $K$.
        people_per_client: People per client (each with ``RECORDS_PER_PERSON`` records).
        heldout_people: People nobody trains on (the non-members of every evaluation).
        seed: Seed of the people and of the partition.
    """
    people = make_profiles(num_clients * people_per_client + heldout_people, seed=seed)
    cut = num_clients * people_per_client
    federated, others = people[:cut], people[cut:]
    records = [r for p in federated for r in qa_records(p)]
    parts = by_owner(np.array([r.owner_id for r in records]), num_clients, seed)
    clients, client_people = {}, {}
    for cid, index in enumerate(parts):
        mine = [records[i] for i in index]
        clients[cid] = task.records_data(cid, mine)
        client_people[cid] = sorted({r.owner_id for r in mine})
    heldout = [r for p in others for r in qa_records(p)]
    everything = {r.record_id: r for r in records + heldout}
    return ProfileFederation(clients, federated, client_people, heldout, everything)
