"""The benchmark: deterministic metrics, verdicts against the oracle, CLI errors."""

import json

import pytest

from fedunlearn.cli import main
from fedunlearn.unlearning.bench import markdown_table, run_benchmark


@pytest.fixture(scope="module")
def result():
    return run_benchmark("digits-backdoor", ["do-nothing", "continue-fedavg"], seeds=2, progress=False)


def test_same_command_twice_gives_identical_metrics(result):
    again = run_benchmark("digits-backdoor", ["do-nothing", "continue-fedavg"], seeds=2, progress=False)
    strip = lambda r: json.dumps({k: v for k, v in r.items() if k != "timing"}, sort_keys=True)  # noqa: E731
    assert strip(result) == strip(again)


def test_verdicts_use_the_oracle_of_the_same_seed(result):
    agg = result["aggregate"]
    assert agg["informative"]["asr"]  # θ_o's backdoor separates it from θ_r
    assert not agg["methods"]["do-nothing"]["retrain_equivalent"]["asr"]
    assert not agg["methods"]["continue-fedavg"]["retrain_equivalent"]["asr"]
    for row in result["per_seed"]:
        gap = row["methods"]["do-nothing"]["gaps"]["asr"]
        assert gap == pytest.approx(row["original"]["asr"] - row["oracle"]["asr"])
    assert agg["methods"]["do-nothing"]["rho_steps"]["median"] == 0
    assert "do-nothing" in markdown_table(result)


def test_cli_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--scenario", "digits-class", "--methods", "do-nothing", "--seeds", "1",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["aggregate"]["oracle"]["forget_acc"]["median"] == 0.0
    assert out.with_suffix(".md").read_text().startswith("| model |")
    assert out.with_suffix(".png").stat().st_size > 1000


def test_cli_unknown_method_is_a_clear_error(capsys):
    assert main(["bench", "--scenario", "digits-class", "--methods", "nope", "--seeds", "1"]) == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err


def test_shrunk_scenario_is_benchmarked_on_its_first_clients_and_rounds(capsys):
    code = main(["bench", "--scenario", "digits-backdoor", "--methods", "retrain", "--seeds", "1",
                 "--num-clients", "3", "--rounds", "2", "--no-progress"])
    assert code == 0
    assert "first 3 clients, 2 rounds" in capsys.readouterr().out
    shrunk = run_benchmark("digits-backdoor", ["retrain"], seeds=1, progress=False, num_clients=3, rounds=2)
    row = shrunk["per_seed"][0]
    # 3 clients x 2 rounds: the oracle trains clients 1 and 2 only, one epoch per round each
    assert row["oracle_cost"]["client_rounds"] == 2 * 2
    assert row["methods"]["retrain"]["rho_steps"] == 1.0


def test_cli_rejects_a_restriction_that_cuts_the_forgotten_client(capsys):
    assert main(["bench", "--scenario", "digits-backdoor", "--methods", "retrain", "--seeds", "1",
                 "--num-clients", "99", "--no-progress"]) == 2
    assert "num-clients=99" in capsys.readouterr().err
    assert main(["bench", "--scenario", "digits-backdoor", "--methods", "retrain", "--rounds", "-1"]) == 2
    assert "--rounds" in capsys.readouterr().err
