"""The CUDA paths, checked on a machine with a GPU: device choice, mixed precision, the CLI.

    python tools/cuda_check.py [--out DIR]        (from the repository root, PYTHONPATH=.)

CI has no GPU, so the code paths that only run on one are checked here, by hand, when a GPU
machine is at hand: `select_device` picks CUDA; `Amp.choose` picks bf16 (or fp16 with a
gradient scaler) and `train_one_epoch` trains with each; `fit` trains, checkpoints and
resumes on the GPU, with `channels_last` too; a checkpoint trained on the GPU opens on the
CPU; `TrainedModel.explain` and `probs` work with the network on the GPU; `cxrlearn train`,
`evaluate`, `gradcam` and `export` run with `--device cuda`, and `train` under `torchrun`
(one process), and `fit` inside a one-rank nccl
process group. Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrlearn.cli import main  # noqa: E402
from cxrlearn.data import load_image, sample_root  # noqa: E402
from cxrlearn.device import describe_device, select_device  # noqa: E402
from cxrlearn.resnet import resnet18  # noqa: E402
from cxrlearn.trained import open_model  # noqa: E402
from cxrlearn.training import Amp, TrainConfig, fit, make_optimizer, train_one_epoch  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str) -> Callable:
    def run(fn: Callable[[], str]) -> Callable:
        start = time.perf_counter()
        try:
            note = fn() or ""
            RESULTS.append((name, True, f"{note} ({time.perf_counter() - start:.1f} s)"))
        except Exception as e:  # a check that fails is reported, the others still run
            RESULTS.append((name, False, f"{type(e).__name__}: {e}"))
            traceback.print_exc()
        return fn
    return run


def quiet(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def run_all(out: Path) -> None:
    data = sample_root()
    cuda = torch.device("cuda")
    fast = ["--image-size", "64", "--epochs", "2", "--test-per-class", "10",
            "--cache-dir", str(out / "cache")]

    @check("select_device picks CUDA")
    def _() -> str:
        assert select_device() == cuda and select_device("cuda:0") == torch.device("cuda", 0)
        return describe_device(cuda)

    @check("Amp.choose: bf16 where the card has it")
    def _() -> str:
        amp = Amp.choose(cuda, True)
        assert amp.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        assert Amp.choose(cuda, False).dtype is None
        assert Amp.choose(torch.device("cpu"), True).dtype is None
        return str(amp.dtype)

    def one_epoch(amp: Amp) -> dict:
        torch.manual_seed(0)
        model = resnet18(num_classes=4).to(cuda)
        x = torch.randn(64, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(1))
        batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        return train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(),
                               make_optimizer(model, TrainConfig()), cuda, amp=amp)

    @check("train_one_epoch in bf16")
    def _() -> str:
        stats = one_epoch(Amp(torch.bfloat16))
        assert math.isfinite(stats["loss"])
        return f"loss {stats['loss']:.3f}, {stats['images_per_s']:.0f} img/s"

    @check("train_one_epoch in fp16 with a GradScaler")
    def _() -> str:
        stats = one_epoch(Amp(torch.float16, torch.amp.GradScaler("cuda")))
        assert math.isfinite(stats["loss"])
        return f"loss {stats['loss']:.3f}"

    @check("cxrlearn train --device cuda (progressive resizing, AMP)")
    def _() -> str:
        assert quiet(["train", "--data", str(data), "--out", str(out / "run"), "--device",
                      "cuda", *fast]) == 0
        model = open_model(out / "run")
        assert model.network is not None and next(model.network.parameters()).device.type == "cpu"
        return f"val macro-F1 {model.scores['val_macro_f1']:.3f}, T = {model.temperature:.2f}"

    @check("cxrlearn train --resume --epochs 3 --device cuda")
    def _() -> str:
        assert quiet(["train", "--out", str(out / "run"), "--resume", "--epochs", "3",
                      "--device", "cuda"]) == 0
        return f"epoch {open_model(out / 'run').checkpoint['history'][-1]['epoch']}"

    @check("fit with channels_last on CUDA")
    def _() -> str:
        run = open_model(out / "run")  # its split, as evaluation-mode datasets
        model = resnet18(num_classes=4)
        history = fit(model, run.dataset("train"), run.dataset("val"),
                      TrainConfig(num_epochs=1, channels_last=True), cuda, run.class_names)
        assert math.isfinite(history[0]["val_loss"])
        return f"{history[0]['images_per_s']:.0f} img/s"

    @check("a GPU-trained model explains and predicts on the GPU and on the CPU")
    def _() -> str:
        model = open_model(out / "run")
        image = load_image(sorted((data / "COVID").glob("*.png"))[0])
        on_cpu = model.probs([image])
        explained_cpu = model.explain(image)
        model.network.to(cuda)  # explain's private copy follows the network to the GPU
        on_gpu = model.probs([image])
        explained_gpu = model.explain(image)
        torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=0)
        torch.testing.assert_close(explained_gpu.cam, explained_cpu.cam, atol=2e-2, rtol=0)
        return f"max |p_gpu - p_cpu| = {float((on_gpu - on_cpu).abs().max()):.1e}"

    @check("cxrlearn evaluate, gradcam and export --device cuda")
    def _() -> str:
        run = out / "run"
        assert quiet(["evaluate", "--model", str(run), "--device", "cuda"]) == 0
        xray = str(sorted((data / "Normal").glob("*.png"))[0])
        assert quiet(["gradcam", xray, "--model", str(run)]) == 0
        assert quiet(["export", "--model", str(run), "--format", "torchscript,export",
                      "--device", "cuda"]) == 0  # parity at 1e-5: a CUDA reference without TF32
        return "report.json, gradcam/, model.pt, model.pt2"

    @check("fit inside an nccl process group (one rank: DDP, all-reduces, barrier)")
    def _() -> str:
        # One GPU cannot hold two nccl ranks, so the group has one: every collective and the
        # DDP wrapper still run through nccl. A subprocess keeps the group out of this one.
        code = (
            "import sys, torch\n"
            "from pathlib import Path\n"
            "from cxrlearn import distributed\n"
            "from cxrlearn.resnet import resnet18\n"
            "from cxrlearn.trained import open_model\n"
            "from cxrlearn.training import TrainConfig, fit\n"
            "run = open_model(Path(sys.argv[1]))\n"
            "device = distributed.init_process_group(distributed.DistEnv(0, 1, 0),"
            " torch.device('cuda'))\n"
            "assert torch.distributed.get_backend() == 'nccl'\n"
            "history = fit(resnet18(num_classes=4), run.dataset('train'), run.dataset('val'),"
            " TrainConfig(num_epochs=1), device, run.class_names, out_dir=sys.argv[2])\n"
            "torch.distributed.destroy_process_group()\n"
            "print('val_loss', history[0]['val_loss'])\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        done = subprocess.run([sys.executable, "-c", code, str(out / "run"), str(out / "nccl")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (out / "nccl" / "last.pt").is_file()
        return done.stdout.strip().splitlines()[-1]

    @check("torchrun --nproc-per-node 1 -m cxrlearn train --device cuda")
    def _() -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             "1", "-m", "cxrlearn", "train", "--data", str(data), "--out", str(out / "ddp"),
             "--device", "cuda", *fast], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        # torchrun with one process is a plain run: detect() sees WORLD_SIZE 1.
        assert "distributed:" not in done.stdout and "cuda" in done.stdout
        assert open_model(out / "ddp").checkpoint is not None
        return "one process: a plain CUDA run"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check")
        sys.exit(1)
    os.environ.setdefault("CXRLEARN_CACHE_DIR", tempfile.mkdtemp(prefix="cxrlearn-cache-"))
    out = args.out or Path(tempfile.mkdtemp(prefix="cxrlearn-cuda-"))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    run_all(out)
    width = max(len(name) for name, _, _ in RESULTS)
    for name, ok, note in RESULTS:
        print(f"{'ok  ' if ok else 'FAIL'} {name:<{width}}  {note}")
    sys.exit(0 if all(ok for _, ok, _ in RESULTS) else 1)
