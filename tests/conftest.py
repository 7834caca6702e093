"""Shared fixtures. `smoke_backbones`: one folder of smoke-scale pre-trained backbones for the
whole test session, shared by every pytest-xdist worker (the folder sits beside the workers'
base temp dirs); reproduce/pipeline.py trains each backbone once under an fcntl lock, so the
first table test that needs one trains it and every other test (any worker) reuses it."""
import os

import pytest


def session_shared_dir(tmp_path_factory, name: str):
    """A folder shared by all xdist workers of this session (or this session's own, without xdist)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smoke_backbones(tmp_path_factory):
    """Pass as `--backbones` to a table's `--smoke` run (or to pipeline.Backbones)."""
    return session_shared_dir(tmp_path_factory, "smoke_backbones")
