"""
`python docs/latency.py [--cuda]`: per-chunk streaming latency, early and late in a long video, for a
random-weight model of the default size: constant in `hybrid`, growing in `full`.
"""

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # the repo root: tiny_videossm.py
from tiny_videossm import StreamCache, VideoDiT, VideoSSMConfig  # noqa: E402


@torch.no_grad()
def latency_benchmark(chunks=(10, 200), steps=4, device="cpu"):
    """Seconds per chunk (steps denoising passes + the clean pass) at chunk 10 and chunk 200."""
    cfg = VideoSSMConfig(causal=True)
    model = VideoDiT(cfg).to(device).eval()
    print(f"seconds per chunk ({cfg.chunk_frames} frames, {steps} denoising steps + the clean pass), "
          f"{cfg.frame_size}x{cfg.frame_size} frames, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{device}, {torch.get_num_threads()} threads")
    print("| mode | " + " | ".join(f"chunk {c}" for c in chunks) + " | ratio | cached tokens at the end |")
    print("|---|" + "--:|" * (len(chunks) + 2))
    shape = (1, cfg.chunk_frames, cfg.channels, cfg.frame_size, cfg.frame_size)
    for mode in ("hybrid", "full"):
        cache = StreamCache(model, 1, mode, device=device)
        cache.set_prompt(model, torch.randn(1, 8, cfg.text_dim, device=device))
        seconds = {}
        for c in range(max(chunks) + 1):
            start = time.perf_counter()
            for _ in range(steps):
                model.forward_chunk(torch.randn(shape, device=device), 500.0, cache)
            model.forward_chunk(torch.randn(shape, device=device), 0.0, cache, write=True)
            seconds[c] = time.perf_counter() - start
        at = [sorted(seconds[i] for i in range(c - 4, c + 1))[2] for c in chunks]     # median of 5
        print(f"| {mode} | " + " | ".join(f"{s:.3f}" for s in at) + f" | {at[-1] / at[0]:.2f}x | {cache.length():,} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--cuda", action="store_true", help="time on the GPU (default: the CPU)")
    latency_benchmark(device="cuda" if parser.parse_args().cuda else "cpu")
