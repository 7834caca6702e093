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


@pytest.fixture(scope="session")
def smoke_table(smoke_backbones):
    """run(module, *args) -> stdout of `python -m reproduce.<module> --smoke --backbones <shared>
    *args` (one thread, one process, SMOKE unset); a non-zero exit fails with its output."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC": "1", "NNODES": "1"}
    env.pop("SMOKE", None)

    def run(module, *args):
        cmd = [sys.executable, "-m", f"reproduce.{module}", "--smoke", "--backbones", str(smoke_backbones), *args]
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout
    return run
