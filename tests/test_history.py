"""Training history: disk round trip, record_every, and loud failures on damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.history import HistoryError, TrainingHistory
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import FederationConfig


def train_history(record_every: int = 1, rounds: int = 4) -> TrainingHistory:
    generator = torch.Generator().manual_seed(0)
    clients = {
        cid: ClientData(
            cid,
            {
                "x": torch.randn(n, 3, generator=generator),
                "y": torch.randint(0, 2, (n,), generator=generator),
            },
            torch.arange(10 * cid, 10 * cid + n),
        )
        for cid, n in enumerate((4, 6, 5))
    }
    task = ClassificationTask(lambda: nn.Linear(3, 2), init_seed=0)
    init = task.get_state(task.build_model())
    config = FederationConfig(
        rounds=rounds, clients_per_round=2, batch_size=2, seed=1, record_every=record_every
    )
    history = TrainingHistory(
        init, record_every, metadata={"scenario": "toy", "config": config.as_dict()}
    )
    run_rounds(InProcessPool(task, clients), init, config, range(rounds), history=history)
    return history


def assert_same_history(a: TrainingHistory, b: TrainingHistory) -> None:
    def same(x: dict, y: dict) -> None:
        assert x.keys() == y.keys()
        for key, value in x.items():
            assert value.dtype == y[key].dtype
            assert torch.equal(value, y[key]), key

    assert a.record_every == b.record_every
    assert a.metadata == b.metadata
    same(a.init_state, b.init_state)
    assert (a.final_state is None) == (b.final_state is None)
    if a.final_state is not None:
        same(a.final_state, b.final_state)
    assert len(a.rounds) == len(b.rounds)
    for ra, rb in zip(a.rounds, b.rounds):
        assert (ra.round_index, ra.participants, ra.sample_counts) == (
            rb.round_index,
            rb.participants,
            rb.sample_counts,
        )
        assert ra.kept == rb.kept
        if ra.kept:
            same(ra.global_state, rb.global_state)
            assert ra.client_updates.keys() == rb.client_updates.keys()
            for cid in ra.client_updates:
                same(ra.client_updates[cid], rb.client_updates[cid])


@pytest.fixture
def saved(tmp_path: Path) -> tuple[TrainingHistory, Path]:
    history = train_history()
    return history, history.save(tmp_path / "history")


# --------------------------------------------------------------------------- round trip


def test_round_trip_keeps_tensors_and_metadata(saved) -> None:
    history, path = saved
    loaded = TrainingHistory.load(path)
    assert_same_history(history, loaded)
    assert loaded.metadata["config"]["seed"] == 1
    assert loaded.storage_bytes() == history.storage_bytes()


def test_record_every_two_keeps_only_even_rounds(tmp_path: Path) -> None:
    history = train_history(record_every=2, rounds=5)
    assert [r.round_index for r in history.rounds] == [0, 1, 2, 3, 4]
    assert [r.round_index for r in history.kept_rounds] == [0, 2, 4]
    assert all(not r.client_updates and r.global_state is None for r in history.rounds[1::2])
    assert all(r.participants for r in history.rounds)  # participants are known for every round
    loaded = TrainingHistory.load(history.save(tmp_path / "h"))
    assert_same_history(history, loaded)
    assert sorted(p.name for p in (tmp_path / "h").glob("round_*")) == [
        "round_00000.safetensors",
        "round_00002.safetensors",
        "round_00004.safetensors",
    ]
    every = train_history(record_every=1, rounds=5)
    assert history.storage_bytes() < every.storage_bytes()


def test_record_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="record_every"):
        TrainingHistory({"w": torch.zeros(1)}, record_every=0)


# --------------------------------------------------------------------------- damage


def test_truncated_file_is_named(saved) -> None:
    _, path = saved
    target = path / "round_00001.safetensors"
    target.write_bytes(target.read_bytes()[:-7])
    with pytest.raises(HistoryError, match=r"round_00001\.safetensors.*truncated"):
        TrainingHistory.load(path)


def test_altered_byte_is_named(saved) -> None:
    _, path = saved
    target = path / "init.safetensors"
    payload = bytearray(target.read_bytes())
    payload[-1] ^= 0x01  # same size, one bit flipped in the tensor data
    target.write_bytes(bytes(payload))
    with pytest.raises(HistoryError, match=r"init\.safetensors.*checksum"):
        TrainingHistory.load(path)


def test_missing_file_is_named(saved) -> None:
    _, path = saved
    (path / "final.safetensors").unlink()
    with pytest.raises(HistoryError, match=r"final\.safetensors.*missing"):
        TrainingHistory.load(path)


def test_bad_manifest_json_is_named(saved) -> None:
    _, path = saved
    (path / "manifest.json").write_text('{"format": "fedunlearn-history", ')
    with pytest.raises(HistoryError, match=r"manifest\.json.*not valid JSON"):
        TrainingHistory.load(path)


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoryError, match=r"manifest\.json.*not found"):
        TrainingHistory.load(tmp_path / "empty")


def test_foreign_manifest_is_rejected(saved) -> None:
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HistoryError, match=r"manifest\.json"):
        TrainingHistory.load(path)


# --------------------------------------------------------------------------- atomic saves


def test_existing_history_is_not_overwritten_by_default(saved) -> None:
    history, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other = train_history(rounds=2)
    with pytest.raises(FileExistsError):
        other.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert_same_history(history, TrainingHistory.load(path))
    other.save(path, overwrite=True)
    assert_same_history(other, TrainingHistory.load(path))


def test_failed_save_leaves_the_old_history_loadable(saved, monkeypatch) -> None:
    history, path = saved
    replacement = train_history(rounds=2)

    class DiskFull(OSError):
        pass

    real_write_bytes = Path.write_bytes
    written: list[str] = []

    def failing_write_bytes(self: Path, data: bytes) -> int:
        written.append(self.name)
        if len(written) == 2:  # fail in the middle of writing the new history
            raise DiskFull("no space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write_bytes)
    with pytest.raises(DiskFull):
        replacement.save(path, overwrite=True)
    monkeypatch.undo()
    assert_same_history(history, TrainingHistory.load(path))
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    assert leftovers == [], f"staging directories left behind: {leftovers}"


# --------------------------------------------------------------------------- require


def test_require_accepts_a_matching_history() -> None:
    history = train_history(record_every=2, rounds=4)
    history.require(record_every=2, rounds=4)


def test_require_rejects_another_record_every() -> None:
    history = train_history(record_every=2)
    with pytest.raises(HistoryError, match="record_every=2.*asks for 1"):
        history.require(record_every=1)


def test_require_rejects_missing_rounds() -> None:
    history = train_history(rounds=4)
    del history.rounds[1]
    with pytest.raises(HistoryError, match=r"missing rounds \[1\]"):
        history.require()


def test_require_rejects_too_few_rounds() -> None:
    with pytest.raises(HistoryError, match="holds 3 rounds, the method needs 5"):
        train_history(rounds=3).require(rounds=5)


def test_require_rejects_a_kept_round_without_tensors() -> None:
    history = train_history(rounds=3)
    history.rounds[2].global_state = None
    with pytest.raises(HistoryError, match="round 2: tensors missing"):
        history.require()


def test_rounds_must_be_recorded_consecutively() -> None:
    history = TrainingHistory({"w": torch.zeros(1)})
    history.record_round(0, {"w": torch.zeros(1)}, {0: {"w": torch.ones(1)}}, {0: 1})
    with pytest.raises(HistoryError, match="round 2 recorded after round 0"):
        history.record_round(2, {"w": torch.zeros(1)}, {0: {"w": torch.ones(1)}}, {0: 1})


def test_a_history_kept_every_round_stands_for_any_interval() -> None:
    """Recording does not change training: thinning the every-round history gives exactly the
    history that recording every 2 rounds keeps."""
    every_round, every_second = train_history(1), train_history(2)
    thinned = every_round.thinned(2)
    assert_same_history(thinned, every_second)
    assert thinned.recorded_bytes() == every_second.recorded_bytes() < every_round.recorded_bytes()
    with pytest.raises(HistoryError, match="cannot stand for record_every=3"):
        every_second.thinned(3)
