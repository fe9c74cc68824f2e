"""Data-parallel training with torchrun on the CPU (gloo): equivalence, one writer, resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from cxrlearn.checkpoint import load_checkpoint
from cxrlearn.distributed import aborted_at_exit, detect, torchrun

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}


def _torchrun(args: list[str], before_retry=None, timeout: int = 300):
    """`cxrlearn.distributed.torchrun` with two processes, which must succeed."""
    job = torchrun(args, 2, env=ENV, timeout=timeout, before_retry=before_retry)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    return job


def _empty(folder: Path):
    """A `before_retry` that starts a folder afresh."""
    def empty() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    return empty


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    from ddp_worker import train  # tests/ is on sys.path under pytest

    out = tmp_path / "run"
    out.mkdir()
    _torchrun([str(HERE / "ddp_worker.py"), str(out)], before_retry=_empty(out))
    ddp = torch.load(out / "final.pt", weights_only=True)
    single = train(None).state_dict()
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # and training moved the weights at all, so the comparison means something
    torch.manual_seed(0)
    from ddp_worker import TinyNoBN

    assert not torch.allclose(TinyNoBN().conv.weight, ddp["conv.weight"])
    # rank 0 alone wrote: one last.pt, no stray temporary files
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "final.pt", "last.pt"]


def test_cli_train_under_torchrun_writes_one_run_and_resumes(tmp_path, copy_sample):
    data = copy_sample(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    common = ["-m", "cxrlearn", "train", "--data", str(data), "--out", str(out),
              "--image-size", "32", "--batch-size", "8", "--test-per-class", "2",
              "--val-fraction", "0.25", "--cache-dir", str(tmp_path / "cache")]
    job = _torchrun([*common, "--epochs", "1"],
                    before_retry=lambda: shutil.rmtree(out, ignore_errors=True))
    assert job.stdout.count("best validation macro-F1") == 1  # rank 0 alone prints
    assert "distributed: 2 processes (gloo)" in job.stdout
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.json", "history.csv", "last.pt", "learning_curves.png",
        "manifest.csv"]
    # A second try must resume from epoch 1 again (a finished run refuses --resume): keep it.
    shutil.copytree(out, tmp_path / "after-epoch-1")

    def back_to_epoch_1() -> None:
        shutil.rmtree(out)
        shutil.copytree(tmp_path / "after-epoch-1", out)

    _torchrun([*common, "--epochs", "2", "--resume"], before_retry=back_to_epoch_1)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2
    assert [row["epoch"] for row in ckpt["history"]] == [1, 2]


# Stand-ins for a worker, to test the retry: rank 1 fails in a chosen way while `marker` does
# not exist, and creates it; rank 0 and any later try succeed.
FAKE_WORKER = """
import os, sys
from pathlib import Path

marker = Path(sys.argv[1])
if os.environ["RANK"] == "1" and not marker.exists():
    marker.touch()
    if sys.argv[2] in ("abort", "message+exit"):
        sys.stderr.write("terminate called without an active exception\\n")
        sys.stderr.flush()
    if sys.argv[2] == "message+exit":
        sys.exit(3)
    os.abort()  # SIGABRT, as the C++ runtime's terminate does
print("rank", os.environ["RANK"], "done")
"""


@pytest.mark.parametrize("failure, retried", [
    ("abort", True),            # gloo's exit race: SIGABRT with its message
    ("silent-abort", False),    # SIGABRT without the message: something else
    ("message+exit", False),    # the message, but the rank exited with an error
])
def test_torchrun_runs_again_only_after_gloos_exit_abort(tmp_path, failure, retried):
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    calls = []
    job = torchrun([str(script), str(tmp_path / "marker"), failure], 2, env=ENV, timeout=120,
                   before_retry=lambda: calls.append("retry"))
    assert (job.first_try is not None) == retried
    assert calls == (["retry"] if retried else [])
    if retried:
        assert aborted_at_exit(job.first_try)
        assert job.returncode == 0 and job.stdout.count("done") == 2  # both ranks, second try
    else:
        assert job.returncode != 0 and not aborted_at_exit(job)


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
