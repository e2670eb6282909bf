"""A real Flower deployment on loopback: one SuperLink, three SuperNodes (one per digits client).

One deployment serves the whole module (started once, torn down at the end; the fixture asserts
that no process is left). On it:

- a training run (two FedAvg rounds, history kept every round) equals the in-process
  ``train_federation`` of the same scenario: history, state, metrics and costs;
- a second training run fails when the SuperNode of client 0 (the client the scenario forgets) is
  SIGKILLed in its round 1: the error names the client and the round, the saved history is
  untouched and the partial history holds round 0;
- with client 0 gone, unlearning runs of one method of each kind equal the in-process
  ``run_method`` (state to 1e-6, same costs): the control ``continue-fedavg`` (``method-config``
  ``{"rounds": 1}``), the incremental ``federaser`` whose calibration runs on the remaining
  SuperNodes, the server-only ``kd`` and the perturbation family's server-only ``fedrecovery``
  (no SuperNode asked anything) and the oracle ``retrain``;
  a training run, which needs every client, fails naming client 0.

The runs after the kill are submitted together (the SuperLink runs them side by side), so the
waits of the failing runs overlap with the work of the others.

The same pool and apps are checked in one process, without a deployment, by ``test_pool.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed; pip install -e '.[flower]'")

from safetensors.torch import load_file

from fedunlearn.federated.history import TrainingHistory
from fedunlearn.flower import APP_DIR
from fedunlearn.flower.settings import RunSettings
from fedunlearn.unlearning.base import (
    TrainedFederation,
    history_fingerprint,
    run_method,
    train_federation,
)
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import Scenario

pytestmark = [pytest.mark.flower, pytest.mark.slow]

BIN = Path(sys.executable).parent
NUM_CLIENTS = 3
ROUNDS = 2
COMMON = f"num-clients={NUM_CLIENTS} rounds={ROUNDS}"
RUN_TIMEOUT_S = 300.0
#: Round timeout of the run whose SuperNode is killed: what it waits after the kill (overlapping
#: with the other runs; Flower may report the node unavailable first), and much more than a round
#: takes on a loaded 2-core machine.
KILLED_TIMEOUT_S = 60
#: How long the training run without client 0 waits for it: the other SuperNodes answer its
#: discovery query meanwhile, behind the messages of the runs submitted before.
FAILING_WAIT_S = 45
ATOL = 1e-6
#: One method of each kind, with its ``method-config`` (the history is kept every round).
METHODS = {
    "continue-fedavg": {"rounds": 1},  # a control: one more round on the remaining clients
    "federaser": {"interval": 1},      # incremental: calibration on the remaining clients (kept rounds 0, 1)
    "kd": {},                          # server only: subtraction and distillation, no client asked
    "fedrecovery": {},                 # perturbation, server only: residual subtraction and noise
    "retrain": {},                     # the oracle, on the remaining SuperNodes
}


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free on 127.0.0.1 (all held open until every one is chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def process_groups_alive(groups: set[int]) -> list[str]:
    """Processes (``pid command``) whose process group is one of ``groups``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) in groups:
            alive.append(f"{stat.parent.name} {text[text.index('(') : text.rindex(')') + 1]}")
    return alive


class Deployment:
    """A SuperLink and SuperNodes on loopback, with the CLI configured to reach them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "flwr-home"
        self.home.mkdir()
        # SuperExec (which starts the ServerApp and ClientApp processes) polls for work every
        # second by default; a quarter of that saves a third of a second per message.
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        link_port, *node_ports = free_ports(1 + NUM_CLIENTS)
        self.address = f"127.0.0.1:{link_port}"
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n'
            f'[superlink.local-deployment]\naddress = "{self.address}"\ninsecure = true\n')
        self.processes: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, list[str]] = {}
        self.groups: set[int] = set()
        self.start("superlink", ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                 "--host", "127.0.0.1", "--port", str(link_port)])
        self.wait_for_port(link_port, 60.0)
        for cid, port in enumerate(node_ports):
            self.start(f"supernode-{cid}", ["flower-supernode", "--insecure", "--superlink", self.address,
                                            "--host", "127.0.0.1", "--port", str(port),
                                            "--node-config", f"partition-id={cid}"])

    def start(self, name: str, command: list[str]) -> None:
        self.commands[name] = command
        with open(self.root / f"{name}.log", "ab") as log:  # the child keeps its own copy
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes[name] = process
        self.groups.add(process.pid)  # a new session's leader: its pid is the group id

    @staticmethod
    def wait_for_port(port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")

    def flwr(self, *args: str, timeout: float = 60.0) -> dict:
        done = subprocess.run(["flwr", *args, "--format", "json"], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"flwr {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")

    def run(self, overrides: str) -> str:
        """Submit a run of the app; returns its run id."""
        answer = self.flwr("run", str(APP_DIR), "local-deployment", "--run-config", overrides)
        assert answer.get("success") is True, answer  # flwr can exit 0 on failure
        return answer["run-id"]

    def log(self, run_id: str) -> str:
        """The ServerApp's log of a run (``flwr log --show``)."""
        done = subprocess.run(["flwr", "log", run_id, "local-deployment", "--show"], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False)
        return done.stdout + done.stderr

    def status(self, run_id: str) -> str:
        answer = self.flwr("ls", "local-deployment", "--run-id", run_id)
        assert answer.get("success") is True, answer
        return answer["runs"][0]["status"]

    def wait(self, run_id: str, result: Path, timeout: float = RUN_TIMEOUT_S) -> str:
        """Wait until the run wrote ``result`` (its ``result.json``) and Flower says it finished;
        returns Flower's status (``finished:...``). Polls the file, and the CLI only every 15 s:
        each ``flwr`` call costs a second of CPU."""
        start = time.monotonic()
        deadline, ask = start + timeout, start + 15.0
        while not result.is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} wrote no {result} within {timeout} s; logs in {self.root}")
            if time.monotonic() > ask:  # a ServerApp that fails before writing results
                if (status := self.status(run_id)).startswith("finished"):
                    return status
                ask = time.monotonic() + 15.0
            time.sleep(0.2)
        while not (status := self.status(run_id)).startswith("finished"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout} s; logs in {self.root}")
            time.sleep(1.0)
        return status

    def stop(self, name: str, grace: float = 15.0) -> int | None:
        """SIGTERM the process; SIGKILL its whole group if it hangs or leaves children behind."""
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None or process_groups_alive({process.pid}):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=grace)
        return process.returncode

    def teardown(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    if shutil.which("flower-superlink", path=str(BIN)) is None:
        pytest.skip(f"flower-superlink is not in {BIN}")
    root = tmp_path_factory.mktemp("flower")
    started = Deployment(root)
    try:
        yield started
    finally:
        started.teardown()
        deadline = time.monotonic() + 10.0
        while process_groups_alive(started.groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_groups_alive(started.groups), "processes left behind"


def result(directory: Path) -> dict:
    return json.loads((directory / "result.json").read_text())


def assert_same_state(flower_state: dict, reference: dict) -> None:
    assert flower_state.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(flower_state[key], value, atol=ATOL, rtol=0, msg=key)


def assert_same_metrics(flower_metrics: dict, reference: dict) -> None:
    assert flower_metrics.keys() == reference.keys()
    for key, value in reference.items():
        assert flower_metrics[key] == pytest.approx(value, abs=1e-6), key


@dataclass
class Federation:
    """The module's training run on Flower and its in-process twin."""

    root: Path
    run_id: str
    scenario: Scenario
    reference: TrainedFederation

    @property
    def history_path(self) -> Path:
        return self.root / "history"

    def paths(self, out: str) -> str:
        return f'history-path="{self.history_path}" out-dir="{self.root / out}"'


@pytest.fixture(scope="module")
def federation(deployment, tmp_path_factory) -> Federation:
    """Train once over the three SuperNodes; the in-process twin trains meanwhile."""
    root = tmp_path_factory.mktemp("federation")
    run_id = deployment.run(f'{COMMON} history-path="{root / "history"}" out-dir="{root / "out"}"')
    scenario = RunSettings(num_clients=NUM_CLIENTS, rounds=ROUNDS).build_scenario()
    reference = train_federation(scenario.task, scenario.pool(), scenario.config,
                                 server_inputs=scenario.server_inputs)
    assert deployment.wait(run_id, root / "out" / "train" / "result.json") == "finished:completed", \
        result(root / "out" / "train")
    return Federation(root, run_id, scenario, reference)


def test_training_on_flower_equals_in_process(deployment, federation):
    trained = result(federation.root / "out" / "train")
    assert trained["status"] == "finished"
    server_log = deployment.log(federation.run_id)
    assert "round 1: updates from clients [0, 1, 2]" in server_log and "train run finished" in server_log
    reference = federation.reference
    history = TrainingHistory.load(federation.history_path)
    assert [r.participants for r in history.rounds] == [[0, 1, 2]] * ROUNDS
    assert history.record_every == 1 and history.metadata["engine"] == "flower"
    assert_same_state(history.final_state, reference.final_state)
    assert_same_state(load_file(federation.root / "out" / "train" / "state.safetensors"), reference.final_state)
    assert_same_metrics(trained["metrics"], evaluate(federation.scenario, reference.final_state))
    expected = reference.cost.as_dict()
    assert {k: trained["cost"][k] for k in expected if k != "wall_time_s"} == \
        {k: v for k, v in expected.items() if k != "wall_time_s"}


def received_train_message(log: Path, run_id: str, round_index: int) -> bool:
    """Whether a SuperNode's log shows it received round ``round_index``'s train message of run
    ``run_id`` and started the ClientApp that trains it."""
    text = log.read_text(errors="replace")
    received = re.search(rf"\[RUN {run_id}, ROUND {round_index}\][^\n]*\n[^\n]*Receiving: train message", text)
    return received is not None and "Start `flwr-clientapp` process" in text[received.end():]


@pytest.fixture(scope="module")
def without_client_0(deployment, federation) -> dict:
    """Client 0 (the one the scenario forgets) leaves abruptly, in the middle of a training run;
    then the runs that must work, or fail, without it go side by side.

    1. A training run (``killed``): once client 0's SuperNode received round 1's train message and
       started the ClientApp for it (its log says so), its process group (SuperNode, SuperExec,
       ClientApp) is SIGKILLed. Flower keeps listing it until its heartbeat expires.
    2. Submitted together while ``killed`` waits for client 0: one unlearning run per method of
       ``METHODS``, and a training run (``failing``), which needs every client. The in-process
       references are computed while they go.
    """
    assert federation.scenario.request.clients == (0,)
    fingerprint = history_fingerprint(TrainingHistory.load(federation.history_path))
    runs = {"killed": deployment.run(f'{COMMON} {federation.paths("killed")} round-timeout-s={KILLED_TIMEOUT_S}')}
    results = {"killed": federation.root / "killed" / "train" / "result.json"}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not received_train_message(deployment.root / "supernode-0.log", runs["killed"], 1):
        assert not results["killed"].is_file(), result(results["killed"].parent)
        assert time.monotonic() < deadline, f"supernode-0 never started round 1; logs in {deployment.root}"
        time.sleep(0.1)
    os.killpg(deployment.processes["supernode-0"].pid, signal.SIGKILL)
    deployment.processes["supernode-0"].wait(timeout=10)

    configs = {"failing": f'{COMMON} {federation.paths("failing")} node-wait-s={FAILING_WAIT_S}'}
    results["failing"] = federation.root / "failing" / "train" / "result.json"
    for name, overrides in METHODS.items():
        configs[name] = (f'{COMMON} {federation.paths("out")} mode="unlearn" method="{name}" '
                         f"method-config='{json.dumps(overrides)}'")  # a TOML literal string
        results[name] = federation.root / "out" / f"unlearn-{name}" / "result.json"
    with ThreadPoolExecutor(len(configs)) as submit:  # each flwr call takes a second or more
        runs.update(zip(configs, submit.map(deployment.run, configs.values())))
    references = {name: run_method(get_method(name, **overrides), federation.reference, federation.scenario.request)
                  for name, overrides in METHODS.items()}
    statuses = {name: deployment.wait(run_id, results[name]) for name, run_id in runs.items()}
    return {"runs": runs, "statuses": statuses, "references": references, "fingerprint": fingerprint}


@pytest.mark.parametrize("name", list(METHODS))
def test_unlearning_on_the_remaining_supernodes_equals_in_process(federation, without_client_0, name):
    assert without_client_0["statuses"][name] == "finished:completed", result(federation.root / "out" / f"unlearn-{name}")
    unlearned = result(federation.root / "out" / f"unlearn-{name}")
    expected = without_client_0["references"][name]
    assert unlearned["status"] == "finished" and unlearned["method"] == expected.method
    assert_same_state(load_file(federation.root / "out" / f"unlearn-{name}" / "state.safetensors"), expected.state)
    for counter in ("client_steps", "server_steps", "client_rounds", "bytes_down", "bytes_up"):
        assert unlearned["cost"][counter] == getattr(expected.cost, counter), counter
    assert_same_metrics(unlearned["metrics"], evaluate(federation.scenario, expected.state))
    trained_rounds = [r for r in unlearned["rounds"] if r["kind"] == "train"]
    assert all(r["participants"] == [1, 2] and r["data"] == "retained" for r in trained_rounds)
    assert [r["round"] for r in trained_rounds] == {"continue-fedavg": [2], "federaser": [1], "kd": [],
                                                    "fedrecovery": [], "retrain": [0, 1]}[name]
    if name in ("kd", "fedrecovery"):  # the server alone: no message to any SuperNode, not even a discovery query
        assert unlearned["rounds"] == [] and unlearned["partitions"] == {} and expected.cost.client_steps == 0
    # an unlearning run never writes the training history
    assert history_fingerprint(TrainingHistory.load(federation.history_path)) == without_client_0["fingerprint"]


def test_training_without_a_supernode_fails_naming_the_client(federation, without_client_0):
    assert without_client_0["statuses"]["failing"].startswith("finished:fail")
    failed = result(federation.root / "failing" / "train")
    assert failed["status"] == "failed"
    assert f"no SuperNode serves client(s) [0] after {FAILING_WAIT_S} s; connected clients: [1, 2]" in failed["error"]
    assert history_fingerprint(TrainingHistory.load(federation.history_path)) == without_client_0["fingerprint"]


def test_supernode_killed_mid_round_fails_the_run(deployment, federation, without_client_0):
    """The run whose SuperNode of client 0 was SIGKILLed in round 1 fails naming the client and
    the round; the history saved earlier is untouched and the rounds recorded before are readable."""
    assert without_client_0["statuses"]["killed"].startswith("finished:fail")
    failed = result(federation.root / "killed" / "train")
    assert failed["status"] == "failed"
    # no reply within the round timeout, or Flower's "node unavailable" once the heartbeat expired
    assert re.search(r"round 1: (no reply from )?client 0 \(SuperNode \d+\)", failed["error"]), failed["error"]
    assert "train run failed: TrainingFailed: round 1" in deployment.log(without_client_0["runs"]["killed"])
    assert history_fingerprint(TrainingHistory.load(federation.history_path)) == without_client_0["fingerprint"]
    partial = TrainingHistory.load(failed["partial_history"])
    assert [r.round_index for r in partial.rounds] == [0] and partial.final_state is None
