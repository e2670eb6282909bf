r"""Training history: what incremental unlearning methods replay.

The loop records, for every round $t$, the participants and their sample counts; every
``record_every`` ($\Delta t$) rounds it also keeps the global state $w_t$ the clients received and
each participant's update $\Delta^k_t$. The history lives in memory and can be saved to a
directory of safetensors files plus a ``manifest.json`` holding each file's SHA-256 and size.

Writes are atomic (a complete new directory replaces the old one), and loading verifies every
file against the manifest: a truncated, tampered or missing file raises
[`HistoryError`][fedunlearn.federated.history.HistoryError] naming it, never a silent load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from fedunlearn.federated.costs import state_bytes
from fedunlearn.federated.task import State, clone_state

FORMAT = "fedunlearn-history"
VERSION = 1


class HistoryError(Exception):
    """A history that cannot be used: corrupted, incomplete, or not what a method needs."""


def read_verified(file: Path, sha256: str, size: int | None = None) -> State:
    """A safetensors file checked against its recorded size and SHA-256, keys sorted.

    Raises:
        HistoryError: Naming the file if it is missing, truncated, altered or unreadable.
    """
    if not file.is_file():
        raise HistoryError(f"{file}: missing")
    payload = file.read_bytes()
    if size is not None and len(payload) != size:
        raise HistoryError(f"{file}: {len(payload)} bytes, manifest says {size} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise HistoryError(f"{file}: checksum mismatch (file altered or corrupted)")
    try:
        # safetensors returns tensors in no fixed order; sorted, every loaded state dict (and
        # every client's update) has the same key order
        return dict(sorted(load_safetensors_bytes(payload).items()))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise HistoryError(f"{file}: unreadable safetensors ({exc})") from exc


@dataclass
class RoundRecord:
    r"""One round of federated training.

    Attributes:
        round_index: Round number $t$.
        participants: Clients that trained in this round (sorted).
        sample_counts: Client id -> $n_k$ used as its FedAvg weight.
        global_state: The state $w_t$ sent to clients, or ``None`` if this round was not kept.
        client_updates: Client id -> $\Delta^k_t$ (empty if this round was not kept).
    """

    round_index: int
    participants: list[int]
    sample_counts: dict[int, int]
    global_state: State | None = None
    client_updates: dict[int, State] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        """Whether tensors of this round are stored."""
        return self.global_state is not None


class TrainingHistory:
    r"""Per-round record of a federated run.

    Args:
        init_state: The initial state $w_0$.
        record_every: Keep tensors every this many rounds ($\Delta t \geq 1$).
        metadata: Free-form JSON-serialisable facts (config, scenario, seed).

    Attributes:
        extras: Further named states a method's own training phase keeps beside the history
            (e.g. per-shard models, a head's training statistics); saved and verified with it.
    """

    def __init__(self, init_state: Mapping[str, torch.Tensor], record_every: int = 1, metadata: dict | None = None) -> None:
        if record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {record_every}")
        self.init_state = clone_state(init_state)
        self.record_every = record_every
        self.metadata = dict(metadata or {})
        self.rounds: list[RoundRecord] = []
        self.final_state: State | None = None
        self.extras: dict[str, State] = {}

    def record_round(
        self,
        round_index: int,
        global_state: Mapping[str, torch.Tensor],
        client_updates: Mapping[int, Mapping[str, torch.Tensor]],
        sample_counts: Mapping[int, int],
    ) -> int:
        """Record a round; returns the bytes of tensors kept (0 for a round not kept)."""
        if self.rounds and round_index != self.rounds[-1].round_index + 1:
            raise HistoryError(
                f"round {round_index} recorded after round {self.rounds[-1].round_index}; "
                "rounds must be consecutive"
            )
        record = RoundRecord(round_index, sorted(client_updates), {int(k): int(v) for k, v in sample_counts.items()})
        if round_index % self.record_every == 0:
            record.global_state = clone_state(global_state)
            record.client_updates = {int(k): clone_state(v) for k, v in client_updates.items()}
        self.rounds.append(record)
        if not record.kept:
            return 0
        return state_bytes(record.global_state) + sum(state_bytes(u) for u in record.client_updates.values())

    @property
    def kept_rounds(self) -> list[RoundRecord]:
        """Rounds whose tensors are stored."""
        return [r for r in self.rounds if r.kept]

    @property
    def clients(self) -> set[int]:
        """Every client that took part in some round."""
        return {c for r in self.rounds for c in r.participants}

    def storage_bytes(self) -> int:
        """Bytes of stored tensors (initial, kept rounds, final)."""
        total = state_bytes(self.init_state) + (state_bytes(self.final_state) if self.final_state else 0)
        for r in self.kept_rounds:
            total += state_bytes(r.global_state) + sum(state_bytes(u) for u in r.client_updates.values())
        return total

    def recorded_bytes(self) -> int:
        """Bytes of the tensors the rounds kept (global states and updates; what the loop adds to
        ``CostCounter.history_bytes``)."""
        return sum(state_bytes(r.global_state) + sum(state_bytes(u) for u in r.client_updates.values())
                   for r in self.kept_rounds)

    def thinned(self, record_every: int) -> TrainingHistory:
        """The history that recording every ``record_every`` rounds would have kept.

        Recording does not change training, so a history kept every round can stand for any
        interval: rounds off the new interval drop their tensors. Tensors are shared, not copied.

        Raises:
            HistoryError: If ``record_every`` is not a multiple of this history's interval.
        """
        if record_every < 1 or record_every % self.record_every:
            raise HistoryError(f"a history kept every {self.record_every} round(s) cannot stand for "
                               f"record_every={record_every}")
        metadata = dict(self.metadata)
        if isinstance(metadata.get("config"), dict):
            metadata["config"] = {**metadata["config"], "record_every": record_every}
        out = TrainingHistory({}, record_every, metadata)
        out.init_state, out.final_state = self.init_state, self.final_state
        for r in self.rounds:
            keep = r.round_index % record_every == 0
            out.rounds.append(RoundRecord(r.round_index, list(r.participants), dict(r.sample_counts),
                                          r.global_state if keep else None,
                                          dict(r.client_updates) if keep else {}))
        return out

    def require(self, *, record_every: int | None = None, rounds: int | None = None) -> None:
        r"""Check that this history is what a method needs.

        Raises:
            HistoryError: If it was recorded with another $\Delta t$, or rounds are missing.
        """
        if record_every is not None and self.record_every != record_every:
            raise HistoryError(
                f"history was recorded with record_every={self.record_every} but the method asks "
                f"for {record_every}; re-train with FederationConfig(record_every={record_every})"
            )
        indices = [r.round_index for r in self.rounds]
        if indices != list(range(len(indices))):
            missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
            raise HistoryError(f"history is missing rounds {missing}")
        if rounds is not None and len(indices) < rounds:
            raise HistoryError(f"history holds {len(indices)} rounds, the method needs {rounds}")
        for r in self.rounds:
            if (r.round_index % self.record_every == 0) != r.kept:
                raise HistoryError(f"round {r.round_index}: tensors missing for a kept round")

    # ---- disk -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the history to directory ``path`` atomically.

        The complete history is written to a temporary sibling directory, then renamed into
        place; an existing history at ``path`` is replaced only with ``overwrite=True`` and only
        once the new one is complete.

        Raises:
            FileExistsError: If ``path`` exists and ``overwrite`` is false.
        """
        target = Path(path)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            files: dict[str, dict] = {}

            def write(name: str, tensors: Mapping[str, torch.Tensor]) -> None:
                payload = save_safetensors_bytes({k: v.contiguous() for k, v in tensors.items()})
                (staging / name).write_bytes(payload)
                files[name] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}

            write("init.safetensors", self.init_state)
            if self.final_state is not None:
                write("final.safetensors", self.final_state)
            for name, extra in sorted(self.extras.items()):
                write(f"extra-{name}.safetensors", extra)
            rounds_meta = []
            for r in self.rounds:
                meta = {"round": r.round_index, "participants": r.participants,
                        "sample_counts": {str(k): v for k, v in r.sample_counts.items()}, "file": None}
                if r.kept:
                    name = f"round_{r.round_index:05d}.safetensors"
                    tensors = {f"global/{k}": v for k, v in r.global_state.items()}
                    for cid, update in r.client_updates.items():
                        tensors.update({f"client/{cid}/{k}": v for k, v in update.items()})
                    write(name, tensors)
                    meta["file"] = name
                rounds_meta.append(meta)
            manifest = {"format": FORMAT, "version": VERSION, "record_every": self.record_every,
                        "metadata": self.metadata, "files": files, "rounds": rounds_meta,
                        "has_final": self.final_state is not None, "extras": sorted(self.extras)}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
            for item in staging.iterdir():
                with open(item, "rb") as handle:
                    os.fsync(handle.fileno())
            if target.exists():
                retired = target.with_name(f".{target.name}.old")
                shutil.rmtree(retired, ignore_errors=True)
                os.replace(target, retired)
                os.replace(staging, target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingHistory:
        """Read and verify a history written by [`save`][fedunlearn.federated.history.TrainingHistory.save].

        Raises:
            HistoryError: Naming the file that is missing, unreadable, truncated or altered.
        """
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise HistoryError(f"{manifest_path}: not found; is {root} a saved training history?")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HistoryError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise HistoryError(f"{manifest_path}: not a {FORMAT} v{VERSION} manifest")

        def read(name: str) -> State:
            expected = manifest["files"].get(name)
            if expected is None:
                raise HistoryError(f"{root / name}: not listed in the manifest")
            return read_verified(root / name, expected["sha256"], expected["bytes"])

        history = cls(read("init.safetensors"), manifest["record_every"], manifest.get("metadata"))
        for meta in manifest["rounds"]:
            counts = {int(k): v for k, v in meta["sample_counts"].items()}
            record = RoundRecord(meta["round"], list(meta["participants"]), counts)
            if meta["file"] is not None:
                tensors = read(meta["file"])
                record.global_state = {k[7:]: v for k, v in tensors.items() if k.startswith("global/")}
                for key, value in tensors.items():
                    if key.startswith("client/"):
                        _, cid, name = key.split("/", 2)
                        record.client_updates.setdefault(int(cid), {})[name] = value
            history.rounds.append(record)
        if manifest.get("has_final"):
            history.final_state = read("final.safetensors")
        history.extras = {name: read(f"extra-{name}.safetensors") for name in manifest.get("extras", [])}
        return history
