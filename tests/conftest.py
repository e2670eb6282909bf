"""Shared test settings: the embedded models are tiny, so one CPU thread is fastest and avoids
oversubscribing the 2-core CI machine."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


#: Test files that take longest on a fresh cache, started first so that no long file is left to
#: run alone at the end (pytest-xdist hands out whole files in collection order): the strict docs
#: build (it executes every notebook, three at a time), then the multi-seed language-model claims.
LONGEST_FIRST = ("test_docs_build.py", "test_npo.py", "test_fedit.py", "test_deployment.py")


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the others is kept


@pytest.fixture
def flower_server(monkeypatch):
    """Flower's ServerApp run in process: ``flower_server(config, nodes, run_config)`` drives
    ``server_app.main`` over the in-process grid of ``tests/flower/test_pool.py`` (``LocalGrid``,
    node id -> client id) with fixed task ids; ``flower_server.assert_same_state`` compares states."""
    pytest.importorskip("flwr", reason="Flower is not installed")
    import importlib.util

    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedunlearn.flower import server_app

    spec = importlib.util.spec_from_file_location("flower_pool_helpers",
                                                  Path(__file__).parent / "flower" / "test_pool.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)

    def run(config: dict, nodes: dict[int, int], run_config: dict) -> None:
        context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                          run_config={**config, **run_config})
        server_app.main(helpers.LocalGrid(config, nodes), context)

    run.assert_same_state = helpers.assert_same_state
    return run
