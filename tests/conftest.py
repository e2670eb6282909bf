"""Shared test settings: the embedded models are tiny, so one CPU thread is fastest and avoids
oversubscribing the 2-core CI machine."""

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
