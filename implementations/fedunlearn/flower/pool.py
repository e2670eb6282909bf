"""The Flower client pool: the package's client seam, answered by SuperNodes.

[`FlowerPool`][fedunlearn.flower.pool.FlowerPool] implements
[`ClientPool`][fedunlearn.federated.pool.ClientPool] over a Flower ``Grid``: each request the
round loop or a method makes of the clients becomes one message per participant, answered by the
ClientApp of the SuperNode that serves that client ([`client_app`][fedunlearn.flower.client_app]).
The pool only moves requests and replies; what a client computes is
[`client_update`][fedunlearn.federated.training.client_update] or
[`client_measure`][fedunlearn.federated.measures.client_measure], as in-process, and every cost is
counted once by [`ClientPool.train`][fedunlearn.federated.pool.ClientPool.train] /
[`measure`][fedunlearn.federated.pool.ClientPool.measure], as in-process. So a method that
trains only through ``run.pool`` runs on Flower unchanged.

- **Discovery.** A SuperNode says which client it serves (``query`` message: partition id and
  example count). The pool asks the connected SuperNodes only when it first needs a client, and
  waits at most ``node_wait_s`` for the ones it needs: a forgotten client's SuperNode may have
  left, and a method that trains only on the server needs none.
- **Sample counts.** For whole-client data selections (all data, or a client request) the count
  of each client follows from its example count; for class and record requests the pool
  asks every client how many examples the plan selects (the request travels in the message; the
  examples never leave the client). Counts are cached per selection.
- **Bounded waits.** Replies are polled every ``poll_s`` seconds (Flower's ``send_and_receive``
  sleeps 3 s between polls); an exchange waits at most ``round_timeout_s``. A SuperNode that is
  missing, fails or does not reply in time fails the request with a ``RuntimeError`` naming the
  client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from logging import INFO

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn.federated.pool import ClientPool, ClientReply
from fedunlearn.federated.requests import GRANULARITIES, ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import State
from fedunlearn.federated.training import FederationConfig, LocalPlan
from fedunlearn.flower.settings import (
    EVALUATE,
    QUERY,
    TRAIN,
    config_record,
    plan_records,
    record_to_state,
    state_to_record,
)

#: Seconds between two polls for replies.
POLL_S = 0.2


def selection(plan: LocalPlan) -> dict:
    """The part of a plan's config that decides which examples it selects (data and request)."""
    return {k: v for k, v in plan.to_config().items() if k == "data" or k.startswith("request.")}


class FlowerPool(ClientPool):
    """The clients of a federation, each served by a SuperNode (``--node-config partition-id=N``).

    Args:
        grid: The run's Flower ``Grid``.
        client_ids: The federation's client ids (from the run config's scenario; no data).
        node_wait_s: Seconds to wait for the SuperNodes a request needs.
        round_timeout_s: Seconds to wait for the replies of one exchange.
        poll_s: Seconds between polls for replies.
    """

    def __init__(self, grid: Grid, client_ids: Iterable[int], *, node_wait_s: float = 120.0,
                 round_timeout_s: float = 300.0, poll_s: float = POLL_S) -> None:
        self.grid = grid
        self._ids = sorted(int(c) for c in client_ids)
        self.node_wait_s = node_wait_s
        self.round_timeout_s = round_timeout_s
        self.poll_s = poll_s
        #: Client id -> SuperNode id, and -> number of examples (from discovery).
        self.node_of: dict[int, int] = {}
        self.num_examples: dict[int, int] = {}
        #: What went wrong with SuperNodes while discovering (reported if a needed client is missing).
        self.problems: list[str] = []
        #: One entry per exchange with clients (training round or evaluation), for results and logs.
        self.log: list[dict] = []
        self._asked: set[int] = set()
        self._queries: dict[str, int] = {}  # discovery queries not answered yet: message id -> node
        self._counts: dict[str, dict[int, int]] = {}

    # ---- ClientPool --------------------------------------------------------------------------

    def client_ids(self) -> list[int]:
        """Every client of the federation (sorted), whether or not its SuperNode is connected."""
        return list(self._ids)

    def sample_counts(self, plan: LocalPlan) -> dict[int, int]:
        """Client id -> examples the plan selects on that client (cached per data selection).

        Raises:
            RuntimeError: If a client that could hold selected examples has no SuperNode.
        """
        key = json.dumps(selection(plan), sort_keys=True, default=str)
        if key not in self._counts:
            self._counts[key] = self._count(plan)
        return dict(self._counts[key])

    def _count(self, plan: LocalPlan) -> dict[int, int]:
        request = plan.request
        if plan.data == "all" or request.kind == "client":
            forgotten = set(request.clients) if request is not None and request.kind == "client" else set()
            holders = {"all": set(self._ids), "retained": set(self._ids) - forgotten,
                       "forgotten": set(self._ids) & forgotten}[plan.data]
            self.discover(holders)
            return {cid: self.num_examples[cid] if cid in holders else 0 for cid in self._ids}
        self.discover(self._ids)
        query = ConfigRecord(selection(plan))
        messages = {cid: Message(RecordDict({"plan": query}), dst_node_id=self.node_of[cid], message_type=QUERY)
                    for cid in self._ids}
        replies = self._exchange(messages, f"sample counts ({plan.data} data of {request.describe()})")
        return {cid: int(replies[cid].content["node"]["num-selected"]) for cid in self._ids}

    def check(self, request: ForgetRequest) -> None:
        """Raise ``ForgetRequestError`` if the request does not fit these clients: unknown client
        ids (naming them and the known ones), every client, or (class and record requests) no
        client holding anything the request removes (asked of the clients)."""
        if request.kind not in GRANULARITIES:
            raise ForgetRequestError(f"unknown request kind {request.kind!r}; use one of {GRANULARITIES}")
        if request.kind == "client":
            if not request.clients:
                raise ForgetRequestError("client request names no client")
            unknown = [c for c in request.clients if c not in self._ids]
            if unknown:
                raise ForgetRequestError(f"unknown client(s) {unknown}; the federation has clients {self._ids}")
            if len(set(request.clients)) >= len(self._ids):
                raise ForgetRequestError("a request cannot forget every client")
            return
        if request.kind == "records" and not request.record_ids:
            raise ForgetRequestError("records request names no record")
        if sum(self.sample_counts(LocalPlan("forgotten", request)).values()) == 0:
            what = f"class {request.label}" if request.kind == "class" else f"any of the {request.describe()}"
            raise ForgetRequestError(f"no client holds {what}; nothing to forget (clients {self._ids})")

    def _train(self, state: State, participants: Sequence[int], round_index: int, config: FederationConfig,
               plan: LocalPlan) -> dict[int, ClientReply]:
        self.discover(participants)
        content = {"state": state_to_record(state), "config": config_record(config),
                   "round": ConfigRecord({"index": int(round_index)}), **plan_records(plan)}
        messages = {cid: Message(RecordDict(content), dst_node_id=self.node_of[cid], message_type=TRAIN,
                                 group_id=str(round_index)) for cid in participants}
        replies = self._exchange(messages, f"round {round_index}")
        out: dict[int, ClientReply] = {}
        for cid in participants:
            update = record_to_state(replies[cid].content["update"])
            metrics = replies[cid].content["metrics"]
            if int(metrics["partition-id"]) != cid:
                raise RuntimeError(f"round {round_index}: SuperNode {self.node_of[cid]} answered for client "
                                   f"{int(metrics['partition-id'])}, not {cid}")
            out[cid] = ClientReply({key: update[key] for key in state},  # the key order of the sent state
                                   int(metrics["num-examples"]), int(metrics["client-steps"]))
        steps = sum(r.steps for r in out.values())
        self.log.append({"kind": "train", "round": int(round_index), "participants": list(participants),
                         "data": plan.data, "objective": plan.objective.name, "client_steps": steps})
        log(INFO, "fedunlearn: round %d: updates from clients %s (%d local steps, %s data, %s)", round_index,
            list(participants), steps, plan.data, plan.objective.name)
        return out

    def _measure(self, state: State, participants: Sequence[int], plan: LocalPlan,
                 measure: str) -> dict[int, tuple[State, int]]:
        self.discover(participants)
        content = {"state": state_to_record(state), "measure": ConfigRecord({"name": measure}), **plan_records(plan)}
        messages = {cid: Message(RecordDict(content), dst_node_id=self.node_of[cid], message_type=EVALUATE)
                    for cid in participants}
        replies = self._exchange(messages, f"measure {measure!r} of {plan.data} data")
        self.log.append({"kind": "evaluate", "participants": list(participants), "data": plan.data,
                         "measure": measure})
        return {cid: (record_to_state(replies[cid].content["sums"]),
                      int(replies[cid].content["metrics"]["num-examples"])) for cid in participants}

    # ---- SuperNodes ----------------------------------------------------------------------------

    def discover(self, needed: Iterable[int]) -> None:
        """Ask connected SuperNodes which client they serve until every ``needed`` client is known.

        Each SuperNode is asked once; the answers of all are collected as they come, and the wait
        ends as soon as the needed clients are known (a SuperNode that died without unregistering
        stays listed by Flower for about a minute, and delays nothing it is not needed for).

        Raises:
            RuntimeError: If a needed client has no SuperNode after ``node_wait_s`` seconds, or two
                SuperNodes serve the same client.
        """
        needed = set(needed)
        deadline = time.monotonic() + self.node_wait_s
        while not needed <= set(self.node_of):
            fresh = sorted(set(self.grid.get_node_ids()) - self._asked)
            if fresh:
                self._asked.update(fresh)
                queries = [Message(RecordDict(), dst_node_id=node, message_type=QUERY) for node in fresh]
                for node, mid in zip(fresh, self.grid.push_messages(queries)):
                    if mid:
                        self._queries[mid] = node
                    else:
                        self.problems.append(f"the query to SuperNode {node} could not be pushed to the SuperLink")
            if self._queries:
                for reply in self.grid.pull_messages(list(self._queries)):
                    node = self._queries.pop(reply.metadata.reply_to_message_id, None)
                    if node is None:
                        continue
                    if reply.has_error():
                        self.problems.append(f"SuperNode {node} failed to answer the query: {reply.error.reason}")
                    else:
                        self._register(reply)
            if needed <= set(self.node_of):
                break
            if time.monotonic() > deadline:
                missing = sorted(needed - set(self.node_of))
                silent = sorted(self._queries.values())
                raise RuntimeError(f"no SuperNode serves client(s) {missing} after {self.node_wait_s:.0f} s; "
                                   f"connected clients: {sorted(self.node_of)}"
                                   + (f"; no answer yet from SuperNode(s) {silent}" if silent else "")
                                   + "".join(f"; {problem}" for problem in self.problems))
            time.sleep(self.poll_s)
        log(INFO, "fedunlearn: SuperNodes serve clients %s", sorted(self.node_of))

    def _register(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        answer = reply.content["node"]
        cid = int(answer["partition-id"])
        if cid not in self._ids:
            self.problems.append(f"SuperNode {node} serves partition {cid}, not a client of this federation")
            return
        if cid in self.node_of and self.node_of[cid] != node:
            raise RuntimeError(f"SuperNodes {self.node_of[cid]} and {node} both serve client {cid}")
        self.node_of[cid] = node
        self.num_examples[cid] = int(answer["num-examples"])

    def _exchange(self, messages: dict[int, Message], what: str) -> dict[int, Message]:
        """Push ``messages`` (keyed by client id), poll for the replies for at most
        ``round_timeout_s``; return the replies by the same keys.

        Raises:
            RuntimeError: Naming the first client whose reply is missing or an error.
        """
        keys = list(messages)
        message_ids = list(self.grid.push_messages([messages[k] for k in keys]))
        pending = {mid: k for k, mid in zip(keys, message_ids) if mid}
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + self.round_timeout_s
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                key = pending.pop(reply.metadata.reply_to_message_id, None)
                if key is not None:
                    replies[key] = reply
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(self.poll_s)
        for key, mid in zip(keys, message_ids):
            name = f"client {key} (SuperNode {messages[key].metadata.dst_node_id})"
            if not mid:
                raise RuntimeError(f"{what}: the message to {name} could not be pushed to the SuperLink")
            if key not in replies:
                raise RuntimeError(f"{what}: no reply from {name} within {self.round_timeout_s:.0f} s "
                                   "(SuperNode stopped or too slow; see round-timeout-s)")
            if replies[key].has_error():
                raise RuntimeError(f"{what}: {name} failed: {replies[key].error.reason}")
        return replies
