"""Running the package's federation on Flower (optional extra ``flower``: ``pip install -e ".[flower]"``).

The Flower app in this folder moves the package's own federated loop onto real processes: a
SuperLink, and one SuperNode per client partition. Nothing is re-implemented for Flower:

- [`client_app`][fedunlearn.flower.client_app] rebuilds the scenario from the seed in the run
  config, takes the partition named by its SuperNode's ``--node-config "partition-id=N"`` and
  trains it with [`client_update`][fedunlearn.federated.loop.client_update];
- [`server_app`][fedunlearn.flower.server_app] samples clients with
  [`sample_clients`][fedunlearn.federated.loop.sample_clients], averages their updates with
  [`server_aggregate`][fedunlearn.federated.loop.server_aggregate], records a
  [`TrainingHistory`][fedunlearn.federated.history.TrainingHistory] and saves it; a later run
  (``mode = "unlearn"``) reads it back and serves a forget request on the remaining SuperNodes;
- [`settings`][fedunlearn.flower.settings] parses the run config and converts state dicts to and
  from Flower's ``ArrayRecord``; it is shared by both apps and by the in-process reference.

Only the trainable state travels (every weight of the digits MLP; only the LoRA adapter tensors of
the tiny language model). With the same seed and partitions, a Flower run gives the same state
dict as [`run_federation`][fedunlearn.federated.loop.run_federation] (up to float rounding).

This package imports no Flower module itself; ``client_app`` and ``server_app`` do.
"""

from pathlib import Path

#: The Flower app folder to pass to ``flwr run`` (holds the app's ``pyproject.toml``); in a clone
#: it is ``implementations/fedunlearn/flower``, in an installed package the same folder there.
APP_DIR = Path(__file__).resolve().parent
