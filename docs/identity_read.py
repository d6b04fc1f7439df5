"""
`python docs/identity_read.py [--prompt P] [--seed N] [--chunks C] [--mode M] [--checkpoint PATH]`: what identity
kept (measure.metrics.identity_kept) reads on one streamed video: the sprite colour of every frame, read from its
pixels, run by run; the colour of its first appearance (the reference); and the share of the late frames that
keep it. The defaults are a video whose sprite leaves early and comes back in another colour.
"""

import argparse
import itertools
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # the repo root
import sample  # noqa: E402
import tiny_videossm as tv  # noqa: E402
from world import SPRITE_COLOURS  # noqa: E402
from measure import metrics  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="a diamond on red", help="one sprite: 'a {shape} on {background}'")
    parser.add_argument("--seed", type=int, default=47651, help="the noise seed")
    parser.add_argument("--chunks", type=int, default=80, help="chunks to stream (default 80: 240 frames)")
    parser.add_argument("--mode", default="hybrid", choices=tv.MODES, help="the memory mode (default hybrid)")
    parser.add_argument("--checkpoint", default="checkpoints/student.pt", help="a released student")
    args = parser.parse_args()
    if args.chunks < 2:
        parser.error(f"--chunks {args.chunks}: identity kept compares two halves, so at least 2 chunks")
    if not args.prompt.startswith("a "):
        parser.error(f"--prompt {args.prompt!r}: identity kept is read on one sprite ('a {{shape}} on {{background}}')")
    model, text_encoder, autoencoder, checkpoint = sample.load(args.checkpoint)
    try:
        text_encoder([args.prompt])
    except ValueError as error:
        parser.error(str(error))
    sigmas = tv.denoising_sigmas(checkpoint["sampling"]["denoising_steps"], checkpoint["sampling"]["timestep_shift"])
    with torch.no_grad():
        video = autoencoder.decode(torch.cat(list(tv.generate(model, text_encoder, {0: args.prompt}, args.chunks, sigmas,
                                                              torch.Generator().manual_seed(args.seed), args.mode)), 1))
    _, track = metrics.read_attributes(video)                               # (1, F), -1: no sprite
    names, frame = ["none", *SPRITE_COLOURS], 0
    runs = []
    for colour, run in itertools.groupby(track[0].tolist()):
        length = len(list(run))
        runs.append(f"{frame}-{frame + length - 1} {names[colour + 1]}")
        frame += length
    half = video.shape[1] // 2
    first = metrics.first_colour(track[0, :half])
    print(f"{args.prompt!r}, seed {args.seed}, {args.mode}, {video.shape[1]} frames. Sprite colour by frame:\n  "
          + ", ".join(runs))
    print(f"first appearance: {names[first + 1]}; identity kept (late frames in it): "
          f"{metrics.identity_kept(video).item():.3f}")


if __name__ == "__main__":
    main()
