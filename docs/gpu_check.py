"""
`python docs/gpu_check.py [--out DIR]`: the CUDA path, checked and timed in one command, for a machine with an
NVIDIA GPU. Without CUDA it says so in one line and exits with status 1. It prints one table:

    kernel      the compiled chunked form (what `kernels.gated_delta_rule` runs on CUDA) against the naive scan
                in float64, on float32 inputs (tolerance 1e-5, the suite's for the chunked form) and on bf16
                inputs (2e-2: bf16 keeps 8 bits of mantissa; the suite cannot run bf16 kernels, the CPU has no
                bf16 triangular solve)
    sampler     `python sample.py --device cuda`: a minute of video from the shipped student
    stages      two steps of each stage of the `gpu` preset (the autoencoder's, whose decoder the memory's phase
                and the sampler run, first) under bf16 autocast (its ODE pairs cut to 64 clips
                so that stage 1 starts in seconds); the first step includes torch.compile's warm-up

The exit status is 1 if a kernel check fails. What it printed on a GPU goes to docs/experiments.md.
"""

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                                   # the repo root: kernels.py, train.py
import kernels  # noqa: E402
import train  # noqa: E402
from measure.kernel_speed import random_inputs  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def check_kernel(dtype):
    """The compiled chunked form on CUDA against the naive scan in float64 on the same inputs: max relative error."""
    inputs = random_inputs(2, 1000, 4, 64, 64, torch.float64, "cuda", seed=0)
    state = torch.randn(2, 4, 64, 64, dtype=torch.float64, device="cuda")
    o_ref, state_ref = kernels.naive_gated_delta_rule(*(x.to(dtype).double() for x in inputs),
                                                      initial_state=state.to(dtype).double())
    o, state_out = kernels.gated_delta_rule(*(x.to(dtype) for x in inputs), initial_state=state.to(dtype))
    return max(((a.double() - b).abs().max() / b.abs().max()).item() for a, b in ((o, o_ref), (state_out, state_ref)))


def time_sampler(out):
    """`python sample.py --device cuda` in a process of its own; its own report of frames and seconds."""
    result = subprocess.run([sys.executable, "sample.py", "--device", "cuda", "--out", str(out / "video.mp4")],
                            cwd=ROOT, capture_output=True, text=True)
    made = re.search(r"(\d+) frames .* made in ([\d.]+) s \(([\d.]+) frames/s", result.stdout)
    if result.returncode or not made:
        return f"failed (exit status {result.returncode}): {result.stderr.strip().splitlines()[-1:]}"
    return f"{made[1]} frames in {made[2]} s, {made[3]} frames/s"


def time_stages(out):
    """Two steps of each stage of the gpu preset, each stage released so that the next can load it."""
    spec = "gpu ode_clips=64"
    run = train.Run("cuda", str(out), seed=0, spec=spec)
    stages = [("stage 0 (autoencoder)", lambda: train.AutoencoderTraining(run), 0),
              ("stage 0 (teacher)", lambda: train.Teacher(run), 0),
              ("stage 1 (ODE distillation)", lambda: train.ODEDistillation(run), 0),
              ("stage 2 (self-rollout DMD)", lambda: train.SelfRolloutDMD(run, "student_dmd.pt"),
               run.preset.critic_warmup),                       # the first step that trains the generator too
              ("stage 2 (memory recall)", lambda: train.MemoryRecall(run, "student_dmd.pt"), 0)]
    rows = []
    for name, make, first in stages:
        stage, seconds = make(), []
        for step in (first, first + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            stage.train_step(step)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        stage.finish()
        rows.append((f"{name}: a step", f"{seconds[1]:.2f} s (the first, warming up: {seconds[0]:.1f} s)"))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check and time the CUDA path: the compiled kernel, the sampler, "
                                                 "two steps of each stage of the gpu preset.")
    parser.add_argument("--out", help="folder for the video and the stages' checkpoints (default: a new temporary one)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("docs/gpu_check.py checks the CUDA path, and this machine has no CUDA device: run it where "
              "torch.cuda.is_available() is True", file=sys.stderr)
        raise SystemExit(1)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], False
    for dtype, tolerance in TOLERANCE.items():
        try:
            error = check_kernel(dtype)
            result = f"max relative error {error:.1e} (tolerance {tolerance:g}): {'pass' if error < tolerance else 'FAIL'}"
        except Exception as failure:                            # e.g. an operation without a CUDA kernel for this dtype
            error, result = float("inf"), f"FAIL: {str(failure).splitlines()[0]}"
        failed |= not error < tolerance
        rows.append((f"kernel, {str(dtype)[6:]} inputs: compiled vs naive (float64)", result))
    rows.append(("python sample.py --device cuda", time_sampler(out)))
    rows += time_stages(out)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| check | result |\n|---|---|")
    for what, result in rows:
        print(f"| {what} | {result} |")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
