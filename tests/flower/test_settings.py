"""The Flower app's run config and state conversion (no deployment; fast)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from fedunlearn.federated.objectives import Distillation
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.training import FederationConfig, LocalPlan
from fedunlearn.flower import APP_DIR
from fedunlearn.flower.settings import (
    RunSettings,
    config_from_record,
    config_record,
    partition_id,
    plan_from_content,
    plan_records,
    record_to_state,
    state_to_record,
    torch_threads,
)
from fedunlearn.unlearning.registry import available_methods

APP_CONFIG = APP_DIR / "pyproject.toml"


def app_run_config() -> dict:
    return tomllib.loads(APP_CONFIG.read_text())["tool"]["flwr"]["app"]["config"]


def test_app_folder_names_the_package_apps():
    app = tomllib.loads(APP_CONFIG.read_text())["tool"]["flwr"]["app"]["components"]
    assert app == {"serverapp": "fedunlearn.flower.server_app:app",
                   "clientapp": "fedunlearn.flower.client_app:app"}
    packaged = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "pyproject.toml" in packaged["tool"]["setuptools"]["package-data"]["fedunlearn.flower"]


def test_app_defaults_are_the_dataclass_defaults():
    assert RunSettings.from_run_config(app_run_config()) == RunSettings()


def test_run_config_is_typed_and_checked():
    settings = RunSettings.from_run_config({"num-clients": 3, "node-wait-s": 5, "mode": "unlearn"})
    assert settings.num_clients == 3 and settings.node_wait_s == 5.0 and settings.mode == "unlearn"
    with pytest.raises(ValueError, match="unknown run config key"):
        RunSettings.from_run_config({"num_clients": 3})
    with pytest.raises(ValueError, match="mode"):
        RunSettings.from_run_config({"mode": "predict"})


def test_any_registered_method_with_its_config_overrides():
    for name in available_methods():
        assert RunSettings.from_run_config({"method": name, "mode": "unlearn"}).unlearning_method().name == name
    method = RunSettings.from_run_config({"method": "continue-fedavg", "method-config": '{"rounds": 1}'})
    assert method.unlearning_method().config.rounds == 1
    assert RunSettings(method="federaser", method_config='{"interval": 1, "calibration_ratio": 1}'
                       ).unlearning_method().label == "federaser[interval=1,calibration_ratio=1.0]"
    with pytest.raises(ValueError, match="unknown method 'forget-all'; known methods: retrain, do-nothing"):
        RunSettings.from_run_config({"method": "forget-all"})
    with pytest.raises(ValueError, match="continue-fedavg has no setting epochs"):
        RunSettings.from_run_config({"method": "continue-fedavg", "method-config": '{"epochs": 1}'})
    with pytest.raises(ValueError, match="rounds must be int"):
        RunSettings.from_run_config({"method": "continue-fedavg", "method-config": '{"rounds": "many"}'})
    # the ClientApp never runs a method: it does not import the entries to check one
    assert RunSettings.from_run_config({"method": "forget-all"}, check_method=False).method == "forget-all"


@pytest.mark.parametrize("text, problem", [('{"rounds": ', "not valid JSON"), ("[1]", "JSON object"),
                                           ('{"rounds": [1]}', "scalars")])
def test_malformed_method_config_is_refused(text, problem):
    with pytest.raises(ValueError, match=problem):
        RunSettings.from_run_config({"method-config": text}, check_method=False)


def test_paths_must_be_absolute(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        RunSettings().path("out-dir")
    with pytest.raises(ValueError, match="absolute"):
        RunSettings(out_dir="results").path("out-dir")
    assert RunSettings(history_path=str(tmp_path)).path("history-path") == tmp_path


def test_scenario_restriction_and_overrides():
    scenario = RunSettings(num_clients=3, rounds=2, record_every=2, forget_clients="1, 2").build_scenario()
    assert sorted(scenario.clients) == [0, 1, 2]
    assert (scenario.config.rounds, scenario.config.record_every) == (2, 2)
    assert scenario.request.clients == (1, 2)
    assert RunSettings(num_clients=3).build_scenario().request.clients == (0,)  # the scenario's own
    with pytest.raises(ValueError, match="num-clients"):
        RunSettings(num_clients=99).build_scenario()
    with pytest.raises(ValueError, match=r"unknown client\(s\) \[5\]"):
        RunSettings(num_clients=3, forget_clients="5").build_scenario()


def test_partition_id_comes_from_the_node_config():
    assert partition_id({"partition-id": 2}) == 2
    with pytest.raises(ValueError, match="partition-id"):
        partition_id({"num-partitions": 3})


def test_torch_threads_come_from_the_node_config():
    assert torch_threads({"partition-id": 0}) == 1
    assert torch_threads({"partition-id": 0, "torch-threads": 4}) == 4
    with pytest.raises(ValueError, match="torch-threads"):
        torch_threads({"torch-threads": 0})


def test_state_round_trips_through_an_array_record():
    pytest.importorskip("flwr", reason="Flower is not installed; pip install -e '.[flower]'")
    state = {"w": torch.randn(3, 4), "b": torch.arange(5), "lora.A": torch.randn(2, 2, dtype=torch.float64)}
    back = record_to_state(state_to_record(state))
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value)
    back["w"] += 1  # writable, and not aliasing the original
    assert not torch.equal(back["w"], state["w"])


def test_plan_and_config_round_trip_through_records():
    pytest.importorskip("flwr", reason="Flower is not installed; pip install -e '.[flower]'")
    from flwr.app import RecordDict

    teacher = {"w": torch.randn(2, 3)}
    plan = LocalPlan("retained", ForgetRequest.forget_records([4, 9]), Distillation(temperature=3.0),
                     local_epochs=0.5, optimizer="adam", optimizer_options=(("beta", 0.5),),
                     states={"teacher": teacher})
    records = plan_records(plan)
    assert sorted(records) == ["plan", "states.teacher"]
    back = plan_from_content(RecordDict(records))
    assert back == plan and torch.equal(back.states["teacher"]["w"], teacher["w"])
    assert plan_from_content(RecordDict(plan_records(LocalPlan()))) == LocalPlan()
    config = FederationConfig(rounds=3, local_epochs=1, lr=0.05, optimizer="adam", record_every=2)
    assert config_from_record(config_record(config)) == config
