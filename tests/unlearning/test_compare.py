"""The comparison engine and ``fedunlearn bench``: deterministic results, verdicts against the oracle of
the same seed, method configs, and clear one-line errors before anything trains."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fedunlearn.cli import main
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.training import LocalPlan
from fedunlearn.unlearning import cache, scenarios
from fedunlearn.unlearning.base import UnlearningMethod, train_federation
from fedunlearn.unlearning.compare import Comparison, compare, compare_sequential, tolerance
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import MethodSettingError, get_method


@pytest.fixture(scope="module")
def result():
    return compare("digits-backdoor", ["do-nothing", "continue-fedavg"], seeds=[0, 1], progress=False)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything trains."""
    def refuse(*args, **kwargs):
        raise AssertionError("trained although the input was invalid")

    monkeypatch.setattr(cache, "_every_round", refuse)


@pytest.mark.slow
def test_same_comparison_twice_gives_identical_metrics(result):
    again = compare("digits-backdoor", ["do-nothing", "continue-fedavg"], seeds=[0, 1], progress=False)

    def strip(c: Comparison) -> str:
        rows = [{k: v for k, v in r.items() if k != "oracle_cost"} for r in c.per_seed]
        for row in rows:
            row["methods"] = {m: {k: v for k, v in d.items() if k not in ("cost", "rho_time")}
                              for m, d in row["methods"].items()}
        return json.dumps(rows, sort_keys=True)

    assert strip(result) == strip(again)


@pytest.mark.slow
def test_verdicts_use_the_oracle_of_the_same_seed(result):
    assert result.informative("asr")  # θ_o's backdoor separates it from θ_r
    assert not result.equivalent("do-nothing", "asr")
    assert not result.equivalent("continue-fedavg", "asr")
    for row in result.per_seed:
        gap = row["methods"]["do-nothing"]["gaps"]["asr"]
        assert gap == pytest.approx(row["original"]["asr"] - row["oracle"]["asr"])
    assert result.rho("do-nothing") == 0
    assert result.aggregate["band"]["test_acc"] >= tolerance("test_acc") == 0.02
    table = result.table(["test_acc", "asr"])
    assert "| do-nothing |" in table and "seeds 0, 1" in table


@pytest.mark.slow
def test_any_seed_list_and_a_round_trip_through_json(tmp_path):
    one = compare("digits-backdoor", ["do-nothing"], seeds=[3], progress=False, num_clients=3, rounds=2)
    assert one.seeds == [3] and one.per_seed[0]["seed"] == 3
    back = Comparison.load(one.save(tmp_path / "c.json"))
    assert back.aggregate == json.loads(json.dumps(one.aggregate))


@pytest.mark.slow
def test_methods_with_configs_are_labelled_and_compared_side_by_side():
    short = get_method("continue-fedavg", rounds=1)
    assert short.label == "continue-fedavg[rounds=1]" and get_method("continue-fedavg").label == "continue-fedavg"
    result = compare("digits-backdoor", ["continue-fedavg", short], seeds=[0], progress=False,
                     num_clients=3, rounds=2)
    steps = {m: result.per_seed[0]["methods"][m]["cost"]["client_steps"] for m in result.methods}
    assert steps["continue-fedavg"] == 5 * steps["continue-fedavg[rounds=1]"]


def test_bad_method_settings_are_refused_by_name():
    with pytest.raises(MethodSettingError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(MethodSettingError, match="federaser has no setting interval_length; settings: interval"):
        get_method("federaser", interval_length=3)
    with pytest.raises(MethodSettingError, match="federaser.interval must be int, got 'two'"):
        get_method("federaser", interval="two")
    assert get_method("federaser", calibration_ratio="1.0").config.calibration_ratio == 1.0
    assert get_method("fedrecover", tolerance_rate="none").config.tolerance_rate is None
    with pytest.raises(MethodSettingError, match="calibration_ratio must be in"):
        get_method("federaser", calibration_ratio=1.5)
    with pytest.raises(MethodSettingError, match="given twice"):
        compare("digits-backdoor", ["do-nothing", "do-nothing"], progress=False)


def test_granularity_mismatch_fails_before_training(no_training):
    with pytest.raises(ForgetRequestError, match="'federaser' serves \\['client'\\] requests, not 'class'"):
        compare("digits-class", ["federaser"], progress=False)


# ---------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "--scenario", "digits-class", "--methods", "do-nothing", "--seeds", "1",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["aggregate"]["oracle"]["forget_acc"]["median"] == 0.0
    assert out.with_suffix(".md").read_text().startswith("| model |")
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_set_changes_a_config(capsys):
    code = main(["bench", "--scenario", "digits-backdoor", "--methods", "continue-fedavg", "--seed-list", "0",
                 "--num-clients", "3", "--rounds", "2", "--set", "continue-fedavg.rounds=1", "--no-progress"])
    assert code == 0
    assert "| continue-fedavg[rounds=1] |" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenario", "digits-class", "--methods", "nope"], "unknown method 'nope'"),
    (["--scenario", "digits-class", "--methods", "federaser"], "serves ['client'] requests, not 'class'"),
    (["--scenario", "digits-backdoor", "--methods", "federaser", "--set", "federaser.nope=1"],
     "federaser has no setting nope"),
    (["--scenario", "digits-backdoor", "--methods", "federaser", "--set", "federaser.interval=x"],
     "federaser.interval must be int, got 'x'"),
    (["--scenario", "digits-backdoor", "--methods", "federaser", "--set", "kd.epochs=1"],
     "--set names method(s) ['kd'] that are not in --methods"),
    (["--scenario", "digits-backdoor", "--methods", "federaser", "--set", "interval=1"], "METHOD.FIELD=VALUE"),
    (["--scenario", "digits-backdoor", "--methods", "retrain", "--num-clients", "99"], "num-clients=99"),
    (["--scenario", "digits-backdoor", "--methods", "retrain", "--rounds", "-1"], "--rounds"),
    (["--scenario", "digits-backdoor", "--methods", "retrain", "--seed-list", "1,x"], "--seed-list"),
    (["--scenario", "profiles-sequential", "--methods", "do-nothing", "--num-clients", "5"], "does not apply"),
    # the perturbation family's privacy budgets and radius (issue 11)
    (["--scenario", "digits-backdoor", "--methods", "pga-erasure", "--set", "pga-erasure.radius=0"],
     "pga-erasure: radius must be positive (or None, or inf), got radius=0.0"),
    (["--scenario", "digits-backdoor", "--methods", "fedrecovery", "--set", "fedrecovery.epsilon=0"],
     "fedrecovery: epsilon must be > 0, got 0.0"),
    (["--scenario", "digits-backdoor", "--methods", "fedrecovery", "--set", "fedrecovery.delta=1"],
     "fedrecovery: delta must lie in (0, 1), got 1.0"),
    (["--scenario", "digits-records", "--methods", "certified-removal", "--set", "certified-removal.delta=0"],
     "certified-removal: delta must lie in (0, 1)"),
    (["--scenario", "profiles-client", "--methods", "npo", "--set", "npo.beta=-1"], "npo: invalid beta=-1.0"),
    (["--scenario", "digits-backdoor", "--methods", "knowledge-ga"],
     "method 'knowledge-ga' runs on ['language'] scenarios, not 'classification'"),
    # the decomposition family (issue 12): a setting that does not fit the scenario, a model without channels
    (["--scenario", "digits-backdoor", "--methods", "sisa", "--set", "sisa.shards=6", "--num-clients", "5"],
     "sisa: shards=6 exceeds the number of clients (5) of 'digits-backdoor'"),
    (["--scenario", "digits-class", "--methods", "class-pruning"],
     "method 'class-pruning' runs only on scenario(s) ['digits-class-cnn'], not 'digits-class'"),
])
def test_cli_bad_input_is_one_line_exit_2_and_trains_nothing(no_training, capsys, argv, message):
    assert main(["bench", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


class HalfRounds(UnlearningMethod):
    """A toy method that owns its training phase: it trains the federation for half the rounds
    (standing for a decomposition method's own training) and forgets by retraining that way."""

    name = "test-half-rounds"
    granularities = frozenset({"client"})
    owns_training = True
    calls: list[int] = []

    def train_federation(self, setup, progress=False):
        self.calls.append(1)
        config = replace(setup.config, rounds=max(1, setup.config.rounds // 2))
        return replace(train_federation(setup.task, setup.pool, config, setup.init_state, model=setup.model),
                       server_inputs=setup.server_inputs)

    def unlearn(self, run, request, counter):
        return run_rounds(run.pool, run.init_state, run.config, range(run.config.rounds),
                          plan=LocalPlan("retained", request), counter=counter)


@pytest.mark.slow
def test_a_method_that_owns_its_training_is_trained_cached_and_judged(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(tmp_path))
    HalfRounds.calls.clear()
    first = compare("digits-backdoor", [HalfRounds()], seeds=[0], progress=False, num_clients=3, rounds=4)
    again = compare("digits-backdoor", [HalfRounds()], seeds=[0], progress=False, num_clients=3, rounds=4)
    # its own training phase ran once on all clients and once on the retained ones (its own
    # oracle), then both came from the cache
    assert HalfRounds.calls == [1, 1]
    row = first.per_seed[0]["methods"]["test-half-rounds"]
    assert "trained_metrics" in row  # its θ_o is evaluated too: the utility its training costs
    assert row["cost"]["client_rounds"] == 2 * 2  # forgetting retrains its 2 rounds on 2 clients
    assert row["metrics"] == again.per_seed[0]["methods"]["test-half-rounds"]["metrics"]
    # judged against its own model retrained without client 0: retraining its way is exact (zero
    # gaps, ρ = 1), while against the common referee (the scenario's 4 rounds) it would not be
    assert all(gap == 0 for gap in row["gaps"].values()) and row["rho_steps"] == 1.0
    assert row["own_oracle"]["test_acc"] != first.per_seed[0]["oracle"]["test_acc"]
    assert "θ_r of test-half-rounds †" in first.table()


def test_without_the_noise_floor_every_band_is_the_tolerance(result):
    """The same comparison without the second oracle: identical metrics, σ_r = 0, bands = tolerance,
    and the table says the noise floor was not measured (the default measures it: control)."""
    lean = compare("digits-backdoor", ["do-nothing", "continue-fedavg"], seeds=[0, 1], progress=False,
                   noise_floor=False)
    assert [r["oracle"] for r in lean.per_seed] == [r["oracle"] for r in result.per_seed]
    assert all(r["oracle_second_seed"] == r["oracle"] for r in lean.per_seed)
    assert all(lean.aggregate["band"][m] == tolerance(m) for m in lean.aggregate["metrics"])
    assert "σ_r not measured" in lean.table() and "σ_r not measured" not in result.table()
    assert any(result.aggregate["band"][m] > tolerance(m) for m in result.aggregate["metrics"])


def test_sequential_comparison_needs_a_sequence(no_training):
    with pytest.raises(ValueError, match="no sequence of requests; scenarios with one: profiles-sequential"):
        compare_sequential("digits-backdoor", ["do-nothing"], progress=False)


class FromOriginal(UnlearningMethod):
    """A toy method that starts every request from θ_o (``sequential_start = "original"``) and
    returns it unchanged: after any request it serves θ_o."""

    name = "test-from-original"
    granularities = frozenset({"client"})
    sequential_start = "original"

    def unlearn(self, run, request, counter):
        return dict(run.final_state)


def test_a_sequence_chains_deployed_models_and_judges_each_request(monkeypatch):
    def two_requests(seed=0, full=False, device=None):
        return replace(scenarios.digits_backdoor(seed, full, device).restricted(rounds=4), sequence=((0,), (1,)))

    monkeypatch.setitem(scenarios.SCENARIOS, "test-two-requests", two_requests)
    steps = compare_sequential("test-two-requests", [("continue-fedavg", {"rounds": 1}), FromOriginal()],
                               progress=False)
    assert [s.per_seed[0]["forgotten"] for s in steps] == [[0], [0, 1]]
    # each request has its own oracle: θ_r without client 0, then without clients 0 and 1
    assert steps[0].value("retrain", "test_acc") != steps[1].value("retrain", "test_acc")
    # "original" serves θ_o after every request; "deployed" continues from its own last model
    for step in steps:
        assert step.value("test-from-original", "test_acc") == step.value("original", "test_acc")
    sc = two_requests().restricted(forget_clients=(0, 1))
    run = cache.trained_federation(sc)
    first = get_method("continue-fedavg", rounds=1).unlearn(run, ForgetRequest.forget_clients(0), CostCounter())
    chained = get_method("continue-fedavg", rounds=1).unlearn(replace(run, final_state=first), sc.request, CostCounter())
    assert steps[1].value("continue-fedavg[rounds=1]", "test_acc") == evaluate(sc, chained, run.model)["test_acc"]
    # the first request alone: the same comparison as the chain's first step; out of range: refused
    only = compare_sequential("test-two-requests", [("continue-fedavg", {"rounds": 1}), FromOriginal()],
                              progress=False, requests=1)
    assert len(only) == 1
    assert [m["metrics"] for m in only[0].per_seed[0]["methods"].values()] == [
        m["metrics"] for m in steps[0].per_seed[0]["methods"].values()]
    with pytest.raises(ValueError, match=r"requests must lie in 0..2 for 'test-two-requests', got 3"):
        compare_sequential("test-two-requests", ["do-nothing"], progress=False, requests=3)


def test_not_above_retrain_is_one_sided_and_holds_at_every_seed():
    def row(seed, oracle, second, method):
        return {"seed": seed, "oracle": {"m": oracle}, "oracle_second_seed": {"m": second}, "original": {"m": 5.0},
                "methods": {"x": {"metrics": {"m": method}, "gaps": {"m": method - oracle},
                                  **{f"rho_{k}": 0.0 for k in ("steps", "comm", "time")}}}}

    # band = max(tolerance 0, 2 sigma_r), sigma_r^2 = mean over seeds of (diff^2 / 2) = 0.5: band sqrt(2)
    below = Comparison("s", [0, 1], False, ["x"], [row(0, 1.0, 0.0, -3.0), row(1, 1.0, 2.0, 2.4)])
    assert below.aggregate["band"]["m"] == pytest.approx(2 ** 0.5)
    assert below.not_above_retrain("x", "m")  # far below θ_r at seed 0 is no failure; +1.4 at seed 1 is within
    above = Comparison("s", [0, 1], False, ["x"], [row(0, 1.0, 0.0, -3.0), row(1, 1.0, 2.0, 2.5)])
    assert not above.not_above_retrain("x", "m")  # +1.5 at one seed is outside, although the median gap is -1


@pytest.mark.slow
def test_tradeoff_plot_draws_the_band_inside_the_metric_range(result, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from fedunlearn.unlearning.bench import tradeoff_plot

    patches = []
    monkeypatch.setattr(Axes, "add_patch", lambda self, patch: patches.append(patch) or patch)
    path = tradeoff_plot(result, tmp_path / "t.png", forgetting="forget_quality", utility="test_acc")
    assert path.stat().st_size > 1000
    (band,) = patches
    x0, y0 = band.get_xy()
    # forget_quality's tolerance (0.95) would reach past 1 from θ_r's 1.0: the band stops at 1
    assert x0 == pytest.approx(1.0 - result.aggregate["band"]["forget_quality"]) and x0 + band.get_width() == 1.0
    assert y0 == pytest.approx(result.value("retrain", "test_acc") - result.aggregate["band"]["test_acc"])


def test_methods_serving_leaves_out_a_method_whose_defaults_do_not_fit_the_scenario():
    """KNOT's default five clusters need five clients: not offered on the four-client language model
    (it is with two clusters, asked explicitly), offered on ten-client digits."""
    from fedunlearn.unlearning.registry import methods_serving

    assert "knot" not in methods_serving(scenarios.build_scenario("profiles-client", 0))
    assert "knot" in methods_serving(scenarios.build_scenario("digits-client", 0))
