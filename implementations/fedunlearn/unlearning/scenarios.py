"""Seeded unlearning scenarios shipped with the package.

| name | data | federation | request |
|---|---|---|---|
| ``digits-backdoor`` | digits (MNIST stand-in) | 10 clients, IID; client 0 adds triggered copies labelled 0 | forget client 0 |
| ``digits-backdoor-paper`` | digits | FedEraser's regime: 20 clients, 10 local epochs, batch 64, momentum 0.9 | forget client 0 |
| ``digits-poisoned`` | digits | 10 clients, IID, 40 rounds; clients 0 and 1 backdoored (20% malicious) | forget clients 0 and 1 |
| ``digits-poisoned-trimmed`` | digits | the same, trained with trimmed-mean aggregation (one update cut at each end) | forget clients 0 and 1 |
| ``digits-client`` | digits, small clients | 10 clients, many local epochs (memorisation regime) | forget honest client 0 |
| ``digits-class`` | digits | 10 clients, IID | forget class 3 |
| ``digits-records`` | digits | 10 clients, IID | forget 100 seeded records, spread over the clients |
| ``digits-class-cnn`` | digits, small CNN | 10 clients, IID | forget class 3 |
| ``digits-class-aux`` | digits, MLP with an auxiliary head | 10 clients, IID | forget class 3 |
| ``digits-backdoor-records`` | digits, MLP with an auxiliary head | as ``digits-backdoor`` | forget client 0's triggered records |
| ``profiles-client`` | fictitious people, tiny LM + LoRA | clients by owner | forget client 0 |
| ``profiles-person`` | same | same | forget one person's records (incl. canary) |
| ``profiles-sequential`` | same, 8 clients of 3 people | same | forget clients 0, 1, 2, 3 one request after another |

Every scenario is a pure function of its seed (partition, poisoned rows, initialisation, client
sampling, data order). ``full=True`` selects a larger configuration. Models live on ``device``
(default: ``$FEDUNLEARN_DEVICE``, else ``"cpu"``); results on another device differ by float
rounding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from fedunlearn.data.digits import apply_trigger, load_split
from fedunlearn.data.federated_digits import digits_clients
from fedunlearn.data.federated_profiles import profile_clients
from fedunlearn.data.profiles import Profile, QARecord, make_profiles, qa_records
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.lora_task import LoraCausalLMTask, public_people
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, request_to_dict, validate
from fedunlearn.federated.task import ClassificationTask, Task
from fedunlearn.federated.training import FederationConfig, derived_seed
from fedunlearn.models.mlp import DigitsMLP


@dataclass
class Scenario:
    """A federation, a forget request and the evaluation data, fixed by a seed.

    Attributes:
        name: Scenario name.
        seed: Its seed.
        kind: ``"classification"`` or ``"language"``.
        task: The task.
        clients: Client id -> data (including the data to forget).
        config: Federated training hyperparameters.
        request: What to forget.
        test: Held-out evaluation tensors (never trained on).
        backdoor_target: Target class of the planted backdoor, if any.
        records: Language scenarios: record id -> record (texts, canaries).
        unseen_records: Language scenarios: records of the unseen people (nobody trained on them;
            the reference population of the evaluation).
        validation_records: Language scenarios: records of further untrained people, for choosing
            hyperparameters without touching the evaluation.
        public_records: Language scenarios: records of public people the base model was
            pretrained on (general knowledge that unlearning should not damage).
        people: Language scenarios: person id -> profile (federated, unseen, validation, public).
        distractors: Language scenarios: people whose values are the wrong answers of the truth ratio.
        sequence: Clients forgotten one request after another (the sequential-requests scenario;
            empty elsewhere); the scenario's own request is the first step.
        server_inputs: Unlabeled inputs the server holds (no labels, disjoint from ``test``), for
            methods that repair a model on the server (e.g. knowledge distillation).
        full: Whether this is the larger configuration.
    """

    name: str
    seed: int
    kind: str
    task: Task
    clients: dict[int, ClientData]
    config: FederationConfig
    request: ForgetRequest
    test: dict[str, torch.Tensor]
    backdoor_target: int | None = None
    records: dict[int, QARecord] = field(default_factory=dict)
    unseen_records: list[QARecord] = field(default_factory=list)
    validation_records: list[QARecord] = field(default_factory=list)
    public_records: list[QARecord] = field(default_factory=list)
    people: dict[int, Profile] = field(default_factory=dict)
    distractors: list[Profile] = field(default_factory=list)
    server_inputs: dict[str, torch.Tensor] | None = None
    full: bool = False
    sequence: tuple[tuple[int, ...], ...] = ()

    def pool(self, model: nn.Module | None = None) -> InProcessPool:
        """The scenario's clients as an in-process pool (the embedded engine)."""
        return InProcessPool(self.task, self.clients, model)

    def fingerprint(self) -> dict:
        """What determines a federation trained on this scenario, as plain data: name, seed,
        config, request, the task's description and a digest of every client's tensors."""
        digest = hashlib.sha256()
        for cid in sorted(self.clients):
            data = self.clients[cid]
            digest.update(str(cid).encode())
            for key in sorted(data.tensors):
                digest.update(key.encode())
                digest.update(data.tensors[key].contiguous().numpy().tobytes())
            digest.update(data.record_ids.contiguous().numpy().tobytes())
        describe = getattr(self.task, "describe", None)
        return {"name": self.name, "seed": self.seed, "full": self.full, "config": self.config.as_dict(),
                "request": request_to_dict(self.request), "clients": digest.hexdigest(),
                "task": describe() if describe else {"class": type(self.task).__name__,
                                                     "init_seed": getattr(self.task, "init_seed", None),
                                                     "device": getattr(self.task, "device", "cpu")}}

    def restricted(self, num_clients: int = 0, rounds: int = 0, record_every: int = 0,
                   forget_clients: tuple[int, ...] = ()) -> Scenario:
        """A smaller copy: the first ``num_clients`` clients, ``rounds`` rounds, another request.

        Zero (or an empty tuple) keeps the scenario's own value. The Flower app and
        ``fedunlearn bench --num-clients/--rounds`` both shrink scenarios this way, so a small
        Flower run has an in-process twin.

        Raises:
            ValueError: If ``num_clients`` exceeds the scenario's clients.
            ForgetRequestError: If the request does not fit the kept clients (e.g. names a client
                that was cut).
        """
        clients = self.clients
        if num_clients > 0:
            if num_clients > len(clients):
                raise ValueError(f"num-clients={num_clients} but {self.name!r} has {len(clients)} clients")
            clients = {c: clients[c] for c in sorted(clients)[:num_clients]}
        config = self.config
        if rounds > 0:
            config = replace(config, rounds=rounds)
        if record_every > 0:
            config = replace(config, record_every=record_every)
        request = ForgetRequest.forget_clients(*forget_clients) if forget_clients else self.request
        validate(request, clients)
        return replace(self, clients=clients, config=config, request=request)

    def triggered_test(self) -> dict[str, torch.Tensor]:
        """Test images with the trigger, with their true labels (for the attack success rate)."""
        return {"x": apply_trigger(self.test["x"]), "y": self.test["y"]}


def split_server_inputs(test: dict[str, torch.Tensor], server_fraction: float, seed: int
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split held-out data into an evaluation part and the server's unlabeled inputs (labels dropped).

    Returns:
        ``(evaluation, unlabeled)``: disjoint rows; ``unlabeled`` keeps only model inputs.
    """
    n = len(next(iter(test.values())))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, 0x5E7)))
    cut = round(server_fraction * n)
    server, kept = order[:cut].sort().values, order[cut:].sort().values
    evaluation = {k: v[kept] for k, v in test.items()}
    unlabeled = {k: v[server] for k, v in test.items() if k in ("x", "input_ids", "attention_mask")}
    return evaluation, unlabeled


def question_inputs(task: LoraCausalLMTask, people: int, seed: int, first_id: int = 2_000_000) -> dict[str, torch.Tensor]:
    """Unlabeled text for a language-model server: the questions (no answers) about ``people``
    fresh fictitious people, ids from ``first_id`` (disjoint by id from federated, held-out and
    pretraining people; names can repeat by chance).
    """
    records = [replace(r, answer="") for p in make_profiles(people, seed=seed, first_id=first_id)
               for r in qa_records(p)]
    encoded = task.encode(records)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


#: Public (pretraining) people whose records measure general knowledge in the language scenarios.
PUBLIC_PEOPLE = 10

#: People whose values are the perturbed (wrong) answers of the truth ratio.
DISTRACTOR_PEOPLE = 50

#: Share of the digits test split handed to the server as unlabeled inputs (not evaluated on).
SERVER_FRACTION = 0.5

DIGITS_CONFIG = FederationConfig(rounds=20, local_epochs=1, batch_size=16, lr=0.1, momentum=0.5)

#: Federated training of the profile scenarios (tuned for the tiny model on 2 CPU cores). Local
#: Adam as in FedIT's clients; many local epochs on few records so that the adapter memorises its
#: people, canaries included, within about 20 s.
PROFILES_FEDERATION = FederationConfig(rounds=15, local_epochs=4, batch_size=10, lr=6e-3, optimizer="adam")


#: The smoke-size cut of ``profiles-client`` that entry notebooks use for their language-model
#: part (``compare("profiles-client", ..., **LM_SMOKE)``): one shared size, so the docs build
#: trains that federation and its oracles once for all of them.
LM_SMOKE = {"rounds": 6}


def default_device() -> str:
    """``$FEDUNLEARN_DEVICE``, else ``"cpu"``."""
    return os.environ.get("FEDUNLEARN_DEVICE", "cpu")


def _digits(name: str, seed: int, full: bool, device: str, *, partition: str = "iid", num_clients: int = 10,
            backdoor: bool = False, request: ForgetRequest, hidden: int = 64,
            config: FederationConfig = DIGITS_CONFIG, rows_per_client: int | None = None,
            backdoor_clients: tuple[int, ...] = (0,)) -> Scenario:
    split = load_split(seed)
    clients = digits_clients(split, partition, num_clients, seed,
                             backdoor_clients=backdoor_clients if backdoor else (), backdoor_fraction=0.5,
                             target=0)
    if rows_per_client is not None:
        clients = {c: d.select(torch.arange(d.num_samples) < rows_per_client) for c, d in clients.items()}
    rounds = config.rounds * (2 if full else 1)
    evaluation, server_inputs = split_server_inputs({"x": split.x_test, "y": split.y_test},
                                                    SERVER_FRACTION, seed)
    return Scenario(
        name=name, seed=seed, kind="classification",
        task=ClassificationTask(lambda: DigitsMLP(hidden=hidden), init_seed=seed, device=device),
        clients=clients, config=replace(config, rounds=rounds, seed=seed), request=request,
        test=evaluation, backdoor_target=0 if backdoor else None, server_inputs=server_inputs, full=full,
    )


def digits_backdoor(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """Client 0 plants a backdoor (trigger patch -> class 0); forget client 0."""
    return _digits("digits-backdoor", seed, full, device or default_device(), backdoor=True, request=ForgetRequest.forget_clients(0))


# --- digits-backdoor-paper (FedEraser entry, issue 10) --------------------------------------
#: FedEraser's regime on digits: the paper's 20 clients; the released code's 10 local epochs,
#: batch 64, SGD momentum 0.9 and 20 rounds. The learning rate stays the digits one (0.1): the
#: code's 0.005 is for an MNIST CNN and leaves the digits MLP at about 0.8 test accuracy.
DIGITS_PAPER_CONFIG = FederationConfig(rounds=20, local_epochs=10, batch_size=64, lr=0.1, momentum=0.9)


def digits_backdoor_paper(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """``digits-backdoor`` in FedEraser's regime (``DIGITS_PAPER_CONFIG``, 20 clients); forget client 0."""
    return _digits("digits-backdoor-paper", seed, full, device or default_device(), backdoor=True, num_clients=20,
                   config=DIGITS_PAPER_CONFIG, request=ForgetRequest.forget_clients(0))
# --- end digits-backdoor-paper ---------------------------------------------------------------


def digits_poisoned(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """Clients 0 and 1 (20% of 10) plant the backdoor; 40 rounds; forget both (FedRecover's setting)."""
    return _digits("digits-poisoned", seed, full, device or default_device(), backdoor=True, backdoor_clients=(0, 1),
                   config=replace(DIGITS_CONFIG, rounds=40), request=ForgetRequest.forget_clients(0, 1))


# --- digits-poisoned-trimmed (FedRecover entry, issue 10) ------------------------------------
#: Trimmed-mean share cut at each end in ``digits-poisoned-trimmed``: one update of the 10 in
#: training and one of the 8 retained in recovery or retraining (floor(0.15 K)). Fewer than the 2
#: malicious clients, so that, as in FedRecover's Trimmed-mean example (poisoned ASR 1.00), the
#: rule alone does not remove the backdoor; cutting 2 of 10 removes most of it here.
POISONED_TRIM_FRACTION = 0.15


def digits_poisoned_trimmed(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """``digits-poisoned`` trained with coordinate-wise trimmed-mean aggregation (FedRecover's
    headline rule), cutting ``POISONED_TRIM_FRACTION`` of the updates at each end."""
    config = replace(DIGITS_CONFIG, rounds=40, aggregation="trimmed-mean", trim_fraction=POISONED_TRIM_FRACTION)
    return _digits("digits-poisoned-trimmed", seed, full, device or default_device(), backdoor=True,
                   backdoor_clients=(0, 1), config=config, request=ForgetRequest.forget_clients(0, 1))
# --- end digits-poisoned-trimmed -------------------------------------------------------------


def digits_client(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """Small clients trained for many local epochs, so members are memorised; forget client 0."""
    config = FederationConfig(rounds=15, local_epochs=10, batch_size=8, lr=0.05, momentum=0.5)
    return _digits("digits-client", seed, full, device or default_device(), hidden=256, config=config, rows_per_client=40,
                   request=ForgetRequest.forget_clients(0))


def digits_class(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """Forget class 3 from every client."""
    return _digits("digits-class", seed, full, device or default_device(), request=ForgetRequest.forget_class(3))


# --- certified-removal (issue 11) ------------------------------------------------------------
#: Records ``digits-records`` forgets (seeded, spread over the clients).
DIGITS_FORGET_RECORDS = 100


def digits_records(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """``digits-class``'s federation (10 IID clients); forget ``DIGITS_FORGET_RECORDS`` records drawn
    at random (seeded) from all clients' data (certified removal, record by record)."""
    scenario = _digits("digits-records", seed, full, device or default_device(), request=ForgetRequest.forget_clients(0))
    ids = torch.cat([scenario.clients[c].record_ids for c in sorted(scenario.clients)])
    pick = torch.randperm(len(ids), generator=torch.Generator().manual_seed(derived_seed(seed, 0xC47)))
    return replace(scenario, request=ForgetRequest.forget_records(ids[pick[:DIGITS_FORGET_RECORDS]].tolist()))
# --- end certified-removal -------------------------------------------------------------------


# --- class-pruning (issue 12) ------------------------------------------------------------------
def digits_class_cnn(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """``digits-class`` (10 IID clients, forget class 3) with a small CNN
    ([`DigitsCNN`][fedunlearn.models.cnn.DigitsCNN]) in place of the MLP: channel pruning needs
    convolution channels."""
    from fedunlearn.models.cnn import DigitsCNN

    scenario = _digits("digits-class-cnn", seed, full, device or default_device(), request=ForgetRequest.forget_class(3))
    return replace(scenario, task=ClassificationTask(DigitsCNN, init_seed=seed, device=scenario.task.device))
# --- end class-pruning -------------------------------------------------------------------------


# --- fedau (issue 12) --------------------------------------------------------------------------
class AuxHeadMLP(nn.Module):
    """[`DigitsMLP`][fedunlearn.models.mlp.DigitsMLP] (``main``) plus an auxiliary linear head
    (``aux``) on its last hidden layer. ``forward`` is the main network's: the auxiliary head is
    idle unless an objective trains it (FedAU's), so FedAvg on this model trains the same MLP as
    the plain scenario (built first under the same seed: the same $w_0$).

    Args:
        hidden: Width of the hidden layers.
        num_classes: Output classes (of both heads).
    """

    def __init__(self, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.main = DigitsMLP(hidden=hidden, num_classes=num_classes)
        self.aux = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (what both heads read)."""
        for layer in list(self.main)[:-1]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the main head."""
        return self.main(x)


def _with_aux_head(scenario: Scenario, name: str) -> Scenario:
    return replace(scenario, name=name, task=ClassificationTask(AuxHeadMLP, init_seed=scenario.seed,
                                                                device=scenario.task.device))


def digits_class_aux(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """``digits-class`` (forget class 3) on [`AuxHeadMLP`][fedunlearn.unlearning.scenarios.AuxHeadMLP]."""
    return _with_aux_head(digits_class(seed, full, device), "digits-class-aux")


def digits_backdoor_records(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """``digits-backdoor``'s federation on [`AuxHeadMLP`][fedunlearn.unlearning.scenarios.AuxHeadMLP];
    forget client 0's triggered (poisoned) records only, keeping its clean ones."""
    from fedunlearn.data.federated_digits import is_poisoned

    scenario = _with_aux_head(digits_backdoor(seed, full, device), "digits-backdoor-records")
    ids = scenario.clients[0].record_ids
    return replace(scenario, request=ForgetRequest.forget_records(ids[is_poisoned(ids)].tolist()))
# --- end fedau ---------------------------------------------------------------------------------


def _profiles(name: str, seed: int, full: bool, person: bool, device: str, num_clients: int = 4,
              people_per_client: int = 5, sequence: tuple[tuple[int, ...], ...] = ()) -> Scenario:
    task = LoraCausalLMTask(init_seed=seed, device=device)
    federation = profile_clients(task, num_clients=num_clients, seed=seed,
                                 people_per_client=people_per_client * (4 if full else 1))
    if person:
        owner = federation.client_people[0][0]
        request = ForgetRequest.forget_records(r.record_id for r in federation.records.values() if r.owner_id == owner)
    else:
        request = ForgetRequest.forget_clients(0)
    config = replace(PROFILES_FEDERATION, seed=seed,
                     rounds=PROFILES_FEDERATION.rounds * (2 if full else 1))
    public = public_people(task.lm, PUBLIC_PEOPLE)
    return Scenario(
        name=name, seed=seed, kind="language", task=task, clients=federation.clients, config=config,
        request=request, test=task.encode(federation.unseen), records=federation.records,
        unseen_records=federation.unseen, validation_records=federation.validation,
        public_records=[r for p in public for r in qa_records(p)],
        people={**federation.people, **{p.person_id: p for p in public}},
        distractors=make_profiles(DISTRACTOR_PEOPLE, seed=seed + 4242, first_id=3_000_000),
        server_inputs=question_inputs(task, people=40, seed=seed + 1234), full=full, sequence=sequence,
    )


def profiles_client(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """Federated LoRA on fictitious people; forget client 0 (all its people)."""
    return _profiles("profiles-client", seed, full, False, device or default_device())


def profiles_person(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """Federated LoRA on fictitious people; forget one person's records, canary included."""
    return _profiles("profiles-person", seed, full, True, device or default_device())


def profiles_sequential(seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """Eight clients of three people each; clients 0, 1, 2 and 3 ask to be forgotten one after
    another (MUSE's sustainability criterion); the first request forgets client 0."""
    return _profiles("profiles-sequential", seed, full, False, device or default_device(), num_clients=8,
                     people_per_client=3, sequence=((0,), (1,), (2,), (3,)))


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "digits-backdoor": digits_backdoor,
    "digits-backdoor-paper": digits_backdoor_paper,  # FedEraser entry (issue 10)
    "digits-poisoned": digits_poisoned,
    "digits-poisoned-trimmed": digits_poisoned_trimmed,  # FedRecover entry (issue 10)
    "digits-client": digits_client,
    "digits-class": digits_class,
    "digits-records": digits_records,  # certified-removal entry (issue 11)
    "digits-class-cnn": digits_class_cnn,  # class-pruning entry (issue 12)
    "digits-class-aux": digits_class_aux,  # fedau entry (issue 12)
    "digits-backdoor-records": digits_backdoor_records,  # fedau entry (issue 12)
    "profiles-client": profiles_client,
    "profiles-person": profiles_person,
    "profiles-sequential": profiles_sequential,
}


def build_scenario(name: str, seed: int = 0, full: bool = False, device: str | None = None) -> Scenario:
    """The named scenario at ``seed`` (models on ``device``, default ``default_device()``).

    Raises:
        KeyError: Listing the known names when ``name`` is unknown.
    """
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known scenarios: {', '.join(SCENARIOS)}")
    return SCENARIOS[name](seed=seed, full=full, device=device)
