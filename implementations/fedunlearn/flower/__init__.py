"""Running the package's federation on Flower (optional extra ``flower``: ``pip install -e ".[flower]"``).

The Flower app in this folder puts the package's clients on real processes: a SuperLink, and one
SuperNode per client partition. It adds one thing, an implementation of the client seam
[`ClientPool`][fedunlearn.federated.pool.ClientPool], and re-implements nothing:

- [`pool`][fedunlearn.flower.pool] — [`FlowerPool`][fedunlearn.flower.pool.FlowerPool], the
  ServerApp's pool: each training or evaluation request of the round loop or of a method becomes
  one message per participant;
- [`client_app`][fedunlearn.flower.client_app] — the ClientApp: rebuilds the scenario from the
  seed in the run config, takes the partition named by its SuperNode's ``--node-config
  "partition-id=N"`` and answers with
  [`client_update`][fedunlearn.federated.training.client_update] or
  [`client_measure`][fedunlearn.federated.measures.client_measure], as the in-process pool does;
- [`server_app`][fedunlearn.flower.server_app] — the ServerApp: trains with
  [`train_federation`][fedunlearn.unlearning.base.train_federation] and saves the history, or
  (``mode = "unlearn"``) serves a forget request with any registered method through
  [`run_method`][fedunlearn.unlearning.base.run_method];
- [`settings`][fedunlearn.flower.settings] — the run config and the message format, shared by
  both apps and by the in-process twin of a run.

Only the trainable state travels (every weight of the digits MLP; only the LoRA adapter tensors of
the tiny language model). With the same seed and partitions, a Flower run gives the same state
dict as the in-process run (up to float rounding).

This package imports no Flower module itself; ``pool``, ``client_app`` and ``server_app`` do.
"""

from pathlib import Path

#: The Flower app folder to pass to ``flwr run`` (holds the app's ``pyproject.toml``); in a clone
#: it is ``implementations/fedunlearn/flower``, in an installed package the same folder there.
APP_DIR = Path(__file__).resolve().parent
