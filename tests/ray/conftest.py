"""The Ray suite's fixtures: one real two-node cluster for the whole session (≈ 15 s to start),
a project repository with a bare repository as the shared remote, and attempts shaped like
the scheduler's."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ray_cluster import LocalCluster  # noqa: E402  (imports no Ray itself)

from tests.conftest import git  # noqa: E402


@pytest.fixture(scope="session")
def cluster():
    c = LocalCluster().start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def remote(tmp_path):
    path = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(path))
    return str(path)
