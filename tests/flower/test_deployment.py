"""A real Flower deployment on loopback: one SuperLink, three SuperNodes (one per digits client).

Trains two FedAvg rounds over Flower, checks the saved history and that the final state equals the
in-process `run_federation` on the same seed and partitions; stops the SuperNode of the client to
forget, serves the forget request with the retrain oracle on the remaining SuperNodes and checks
that state against the in-process `Retrain`; then checks that a training run missing a SuperNode
fails with a message naming the client and leaves the saved history readable. A second test
(also marked ``slow``) trains with a history kept every 2 rounds and checks FedEraser and
continue-FedAvg on the remaining SuperNodes against their in-process runs. Every process is started
in its own process group and torn down by id; the fixture asserts none is left behind.
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
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed; pip install -e '.[flower]'")

from safetensors.torch import load_file

from fedunlearn.federated.history import TrainingHistory
from fedunlearn.flower import APP_DIR
from fedunlearn.flower.settings import RunSettings
from fedunlearn.incremental.federaser import FedEraser
from fedunlearn.unlearning.base import history_fingerprint, run_method, train_federation
from fedunlearn.unlearning.bench import run_benchmark
from fedunlearn.unlearning.controls import ContinueFedAvg, ContinueFedAvgConfig, Retrain
from fedunlearn.unlearning.evaluate import evaluate

pytestmark = pytest.mark.flower

BIN = Path(sys.executable).parent
NUM_CLIENTS = 3
ROUNDS = 2
COMMON = f"num-clients={NUM_CLIENTS} rounds={ROUNDS}"
RUN_TIMEOUT_S = 240.0
ATOL = 1e-6


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
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0",
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

    def ensure_running(self, name: str) -> None:
        """Start ``name`` again (same command, same port) if it was stopped."""
        if self.processes[name].poll() is not None:
            self.start(name, self.commands[name])

    def start(self, name: str, command: list[str]) -> None:
        self.commands[name] = command
        with open(self.root / f"{name}.log", "wb") as log:  # the child keeps its own copy
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

    def wait(self, run_id: str, timeout: float = RUN_TIMEOUT_S) -> str:
        """Poll ``flwr ls`` until the run finished; returns its status (``finished:...``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.flwr("ls", "local-deployment", "--run-id", run_id)
            assert answer.get("success") is True, answer
            status = answer["runs"][0]["status"]
            if status.startswith("finished"):
                return status
            time.sleep(2.0)
        raise TimeoutError(f"run {run_id} did not finish within {timeout} s; logs in {self.root}")

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


def received_train_message(log: Path, run_id: str, round_index: int) -> bool:
    """Whether a SuperNode's log shows it received round ``round_index``'s train message of run
    ``run_id`` and started the ClientApp that trains it."""
    text = log.read_text(errors="replace")
    received = re.search(rf"\[RUN {run_id}, ROUND {round_index}\][^\n]*\n[^\n]*Receiving: train message", text)
    return received is not None and "Start `flwr-clientapp` process" in text[received.end():]


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


def test_train_then_retrain_on_flower(deployment, tmp_path):
    history_path, out = tmp_path / "history", tmp_path / "out"
    paths = f'history-path="{history_path}" out-dir="{out}"'

    # Training over the three SuperNodes; the in-process reference runs meanwhile.
    train_run = deployment.run(f"{COMMON} {paths}")
    scenario = RunSettings(num_clients=NUM_CLIENTS, rounds=ROUNDS).build_scenario()
    reference = train_federation(scenario.task, scenario.clients, scenario.config)
    oracle = run_method(Retrain(), reference, scenario.request)
    bench = run_benchmark("digits-backdoor", ["retrain"], seeds=1, progress=False,
                          num_clients=NUM_CLIENTS, rounds=ROUNDS)["per_seed"][0]
    assert deployment.wait(train_run) == "finished:completed"

    trained = result(out / "train")
    assert trained["status"] == "finished"
    server_log = deployment.log(train_run)
    assert "round 1: updates from clients [0, 1, 2]" in server_log and "train run finished" in server_log
    history = TrainingHistory.load(history_path)
    assert [r.participants for r in history.rounds] == [[0, 1, 2]] * ROUNDS
    assert history.final_state is not None
    assert_same_state(history.final_state, reference.final_state)
    assert_same_state(load_file(out / "train" / "state.safetensors"), reference.final_state)
    assert {"test_acc", "asr", "mia_auc"} <= set(trained["metrics"])
    assert_same_metrics(trained["metrics"], bench["original"])  # what `fedunlearn bench` prints for θ_o

    # The client to forget leaves; the retrain oracle runs on the two remaining SuperNodes.
    assert scenario.request.clients == (0,)
    deployment.stop("supernode-0")
    fingerprint = history_fingerprint(history)
    unlearn_run = deployment.run(f'{COMMON} {paths} mode="unlearn" method="retrain"')
    assert deployment.wait(unlearn_run) == "finished:completed"
    unlearned = result(out / "unlearn-retrain")
    assert unlearned["status"] == "finished", unlearned
    assert [r["participants"] for r in unlearned["rounds"]] == [[1, 2]] * ROUNDS
    assert all(r["retained"] for r in unlearned["rounds"])
    assert_same_state(load_file(out / "unlearn-retrain" / "state.safetensors"), oracle.state)
    assert unlearned["cost"]["client_steps"] == oracle.cost.client_steps
    assert_same_metrics(unlearned["metrics"], bench["oracle"])  # ... and for θ_r
    retrain_history = TrainingHistory.load(out / "unlearn-retrain" / "history")
    assert 0 not in retrain_history.clients
    assert history_fingerprint(TrainingHistory.load(history_path)) == fingerprint

    # Training needs every client's SuperNode: without client 0 it fails, naming it, and the saved
    # history is left as it was.
    failing_run = deployment.run(f"{COMMON} {paths} node-wait-s=5")
    assert deployment.wait(failing_run).startswith("finished:fail")
    failed = result(out / "train")
    assert failed["status"] == "failed"
    assert "client(s) [0]" in failed["error"]
    assert history_fingerprint(TrainingHistory.load(history_path)) == fingerprint


@pytest.mark.slow
def test_federaser_and_continue_fedavg_on_flower(deployment, tmp_path):
    """FedEraser's calibration and continue-FedAvg's rounds run on the remaining SuperNodes."""
    deployment.ensure_running("supernode-0")  # the previous test stopped it
    shape = f"num-clients={NUM_CLIENTS} rounds=3 record-every=2"  # kept rounds 0 and 2
    paths = f'history-path="{tmp_path / "history"}" out-dir="{tmp_path / "out"}"'
    train_run = deployment.run(f"{shape} {paths}")
    scenario = RunSettings(num_clients=NUM_CLIENTS, rounds=3, record_every=2).build_scenario()
    reference = train_federation(scenario.task, scenario.clients, scenario.config)
    federaser = run_method(FedEraser(), reference, scenario.request)
    extra = run_method(ContinueFedAvg(ContinueFedAvgConfig(rounds=1)), reference, scenario.request)
    assert deployment.wait(train_run) == "finished:completed"
    assert_same_state(load_file(tmp_path / "out" / "train" / "state.safetensors"), reference.final_state)

    deployment.stop("supernode-0")
    for method, oracle, rounds in (("federaser", federaser, [2]), ("continue-fedavg", extra, [3])):
        run_id = deployment.run(f'{shape} {paths} mode="unlearn" method="{method}" continue-rounds=1')
        assert deployment.wait(run_id) == "finished:completed", method
        unlearned = result(tmp_path / "out" / f"unlearn-{method}")
        assert [r["round"] for r in unlearned["rounds"]] == rounds
        assert all(r["participants"] == [1, 2] for r in unlearned["rounds"])
        assert unlearned["cost"]["client_steps"] == oracle.cost.client_steps
        assert_same_state(load_file(tmp_path / "out" / f"unlearn-{method}" / "state.safetensors"), oracle.state)


@pytest.mark.slow
def test_lora_language_model_on_flower(deployment, tmp_path):
    """The tiny LoRA language model: only adapter tensors travel; train and retrain match in-process."""
    deployment.ensure_running("supernode-0")
    shape = f'scenario="profiles-client" num-clients={NUM_CLIENTS} rounds=1'
    paths = f'history-path="{tmp_path / "history"}" out-dir="{tmp_path / "out"}"'
    # The in-process twin runs first: it pretrains the tiny model into the shared cache, which
    # every ClientApp process then reads instead of pretraining it again.
    scenario = RunSettings(scenario="profiles-client", num_clients=NUM_CLIENTS, rounds=1).build_scenario()
    reference = train_federation(scenario.task, scenario.clients, scenario.config)
    oracle = run_method(Retrain(), reference, scenario.request)
    train_run = deployment.run(f"{shape} {paths}")
    assert deployment.wait(train_run) == "finished:completed"
    trained = result(tmp_path / "out" / "train")
    flower_state = load_file(tmp_path / "out" / "train" / "state.safetensors")
    assert_same_state(flower_state, reference.final_state)
    full_model = reference.model.state_dict()
    assert all("lora_" in key for key in flower_state) and len(flower_state) < len(full_model)
    assert trained["cost"]["bytes_down"] == reference.cost.bytes_down  # adapters only, as in-process
    assert trained["metrics"]["test_logprob"] == pytest.approx(
        evaluate(scenario, reference.final_state, reference.model)["test_logprob"], abs=1e-6)

    deployment.stop("supernode-0")
    run_id = deployment.run(f'{shape} {paths} mode="unlearn" method="retrain"')
    assert deployment.wait(run_id) == "finished:completed"
    unlearned = result(tmp_path / "out" / "unlearn-retrain")
    assert [r["participants"] for r in unlearned["rounds"]] == [[1, 2]]
    assert_same_state(load_file(tmp_path / "out" / "unlearn-retrain" / "state.safetensors"), oracle.state)


def test_supernode_killed_mid_round_fails_the_run(deployment, tmp_path):
    """SIGKILL a SuperNode once it has received round 1's train message and started the ClientApp
    for it (its log says so): the run fails naming the client and round,
    the history saved earlier is untouched and the rounds recorded before are readable.

    Runs last: the killed SuperNode stays down (Flower lists it until its heartbeat expires).
    """
    deployment.ensure_running("supernode-0")
    shape = f"num-clients={NUM_CLIENTS} rounds=3"
    history_path, out = tmp_path / "history", tmp_path / "out"
    scenario = RunSettings(num_clients=NUM_CLIENTS, rounds=3).build_scenario()
    train_federation(scenario.task, scenario.clients, scenario.config).history.save(history_path)
    fingerprint = history_fingerprint(TrainingHistory.load(history_path))

    run_id = deployment.run(f'{shape} history-path="{history_path}" out-dir="{out}" round-timeout-s=20')
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not received_train_message(deployment.root / "supernode-1.log", run_id, 1):
        assert time.monotonic() < deadline, f"supernode-1 never started round 1; logs in {deployment.root}"
        time.sleep(0.1)
    # the whole SuperNode, its SuperExec and the ClientApp training round 1
    os.killpg(deployment.processes["supernode-1"].pid, signal.SIGKILL)
    deployment.processes["supernode-1"].wait(timeout=10)

    assert deployment.wait(run_id).startswith("finished:fail")
    failed = result(out / "train")
    assert failed["status"] == "failed"
    assert "round 1" in failed["error"] and "client 1" in failed["error"], failed["error"]
    assert "train run failed: TrainingFailed: round 1" in deployment.log(run_id)
    assert history_fingerprint(TrainingHistory.load(history_path)) == fingerprint
    partial = TrainingHistory.load(failed["partial_history"])
    assert [r.round_index for r in partial.rounds] == [0] and partial.final_state is None
