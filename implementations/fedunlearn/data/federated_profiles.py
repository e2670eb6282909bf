"""Fictitious people over federated clients: the data of the language-model scenarios.

[`profile_clients`][fedunlearn.data.federated_profiles.profile_clients] makes seeded people
([`make_profiles`][fedunlearn.data.profiles.make_profiles]), spreads their question-answer records
over clients **by owner** (a person lives on exactly one client, so "forget this client" and
"forget this person" are both expressible) and keeps two further populations that nobody trains
on: the **unseen** people (the reference of every evaluation: held-out utility, membership
non-members, the forgetting thresholds) and the **validation** people (for choosing a method's
hyperparameters without looking at the evaluation). The records are encoded by the task passed in
(its tokenizer and length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedunlearn.data.profiles import Profile, QARecord, make_profiles, qa_records
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.partition import by_owner


@dataclass(frozen=True)
class ProfileFederation:
    """People spread over clients by owner, plus people nobody trained on.

    Attributes:
        clients: Client id -> data.
        people: Every person (federated, unseen and validation), by id.
        client_people: Client id -> ids of its people.
        unseen: Records of the unseen people (never in any client; the evaluation reference).
        validation: Records of the validation people (never in any client; for tuning).
        records: Record id -> record, for every record above.
    """

    clients: dict[int, ClientData]
    people: dict[int, Profile]
    client_people: dict[int, list[int]]
    unseen: list[QARecord]
    validation: list[QARecord]
    records: dict[int, QARecord]


def profile_clients(
    task, num_clients: int = 4, people_per_client: int = 5,
    unseen_people: int = 20, validation_people: int = 10, seed: int = 0,
) -> ProfileFederation:
    """Make fictitious people and partition their records over clients by owner.

    Args:
        task: Encodes the records: any object with ``records_data(client_id, records)``, such as
            [`LoraCausalLMTask`][fedunlearn.federated.lora_task.LoraCausalLMTask].
        num_clients: Clients $K$.
        people_per_client: People per client (each with ``RECORDS_PER_PERSON`` records).
        unseen_people: People nobody trains on (the reference of every evaluation).
        validation_people: Further people nobody trains on (for tuning).
        seed: Seed of the people and of the partition.
    """
    people = make_profiles(num_clients * people_per_client + unseen_people + validation_people, seed=seed)
    cut = num_clients * people_per_client
    federated, others = people[:cut], people[cut : cut + unseen_people]
    tuning = people[cut + unseen_people :]
    records = [r for p in federated for r in qa_records(p)]
    parts = by_owner(np.array([r.owner_id for r in records]), num_clients, seed)
    clients, client_people = {}, {}
    for cid, index in enumerate(parts):
        mine = [records[i] for i in index]
        clients[cid] = task.records_data(cid, mine)
        client_people[cid] = sorted({r.owner_id for r in mine})
    unseen = [r for p in others for r in qa_records(p)]
    validation = [r for p in tuning for r in qa_records(p)]
    everything = {r.record_id: r for r in records + unseen + validation}
    return ProfileFederation(clients, {p.person_id: p for p in people}, client_people, unseen, validation, everything)
