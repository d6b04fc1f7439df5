"""
Stream a very long video without keeping it, and print, ten times along the way, the cache's size and
the process's peak memory: both stay flat in every mode but `full`.

    python -m measure.memory_trace                             10,000 frames in hybrid
    python -m measure.memory_trace --mode full --frames 2000
"""

import argparse
import sys
import time

import torch
from tqdm import tqdm

import sample
import tiny_videossm as tv
from measure.benchmark import cache_bytes


def peak_memory_mb():
    """The process's peak resident memory so far, in MB (Linux and macOS; None elsewhere)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss            # KB on Linux, bytes on macOS
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


@torch.no_grad()
def memory_trace(model, text_encoder, autoencoder, checkpoint, prompt, frames, mode, steps, seed):
    """Streams `frames` frames of `prompt` in `mode` and prints a markdown table: made so far, the cache,
    the process's peak memory, frames/s."""
    cache = tv.StreamCache(model, 1, mode, device=next(model.parameters()).device)
    print(f"{mode} memory, {frames} frames of {prompt!r}\n")
    print("| frames | cache | peak process memory | frames/s |\n|--:|--:|--:|--:|")
    every, made, started = max(1, frames // 10), 0, time.time()
    with tqdm(total=frames, unit="frame", desc=f"{mode} memory", leave=False) as bar:
        for chunk in sample.stream(model, text_encoder, autoencoder, {0: prompt}, frames, steps,
                                  checkpoint["sampling"]["timestep_shift"], seed, mode, cache):
            made += chunk.shape[1]
            bar.update(chunk.shape[1])
            if made // every > (made - chunk.shape[1]) // every or made >= frames:
                peak = peak_memory_mb()
                tqdm.write(f"| {made} | {cache_bytes(cache) / 2 ** 20:.3f} MB | "
                           f"{f'{peak:.0f} MB' if peak else 'n/a'} | {made / (time.time() - started):.1f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m measure.memory_trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000, help="frames to stream (default 10000)")
    parser.add_argument("--mode", choices=tv.MODES, default="hybrid", help="memory mode (default hybrid)")
    parser.add_argument("--prompt", default=sample.DEFAULT_PROMPT, help=f"what to show (default {sample.DEFAULT_PROMPT!r})")
    sample.add_student_arguments(parser)
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames {args.frames}: the stream needs at least one frame")
    sample.check_prompt("--prompt", args.prompt)
    memory_trace(*sample.load_student(parser, args), args.prompt, args.frames, args.mode, args.steps, args.seed)


if __name__ == "__main__":
    main()
