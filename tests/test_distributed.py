"""Data-parallel training with torchrun on the CPU (gloo): equivalence, one writer, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.distributed import detect

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2"]


def _torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    proc = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    from ddp_worker import train  # tests/ is on sys.path under pytest

    _torchrun([str(HERE / "ddp_worker.py"), str(tmp_path)])
    ddp = torch.load(tmp_path / "final.pt", weights_only=True)
    single = train(None).state_dict()
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # and training moved the weights at all, so the comparison means something
    torch.manual_seed(0)
    from ddp_worker import TinyNoBN

    assert not torch.allclose(TinyNoBN().conv.weight, ddp["conv.weight"])
    # rank 0 alone wrote: one last.pt, no stray temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "final.pt", "last.pt"]


def test_cli_train_under_torchrun_writes_one_run_and_resumes(tmp_path, copy_sample):
    data = copy_sample(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    common = ["-m", "cxrlearn", "train", "--data", str(data), "--out", str(out),
              "--image-size", "32", "--batch-size", "8", "--test-per-class", "2",
              "--val-fraction", "0.25", "--cache-dir", str(tmp_path / "cache")]
    proc = _torchrun([*common, "--epochs", "1"])
    assert proc.stdout.count("best validation macro-F1") == 1  # rank 0 alone prints
    assert "distributed: 2 processes (gloo)" in proc.stdout
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.json", "history.csv", "last.pt", "learning_curves.png",
        "manifest.csv"]
    _torchrun([*common, "--epochs", "2", "--resume"])
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2
    assert [row["epoch"] for row in ckpt["history"]] == [1, 2]


def test_detect_reads_torchrun_variables(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert detect() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    env = detect()
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (2, 4, 0, False)


def test_sync_batchnorm_is_refused_on_cpu():
    from cxrlearn.distributed import use_sync_batchnorm
    from cxrlearn.errors import CxrlearnError

    with pytest.raises(CxrlearnError, match="SyncBatchNorm needs CUDA"):
        use_sync_batchnorm(torch.nn.BatchNorm2d(3), torch.device("cpu"))
