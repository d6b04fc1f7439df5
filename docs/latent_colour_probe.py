"""
`python docs/latent_colour_probe.py AUTOENCODER`: can a sprite's colour be read linearly off one latent cell? On
single frames of the default world with one sprite, the latent cells whose pixels are mostly sprite: a least-squares
read of the colour from a cell's channels, fitted on one draw and scored on another (chance 0.25).
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as nnf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo root
import tiny_videossm as tv  # noqa: E402
from world import World, sprite_mask  # noqa: E402


@torch.no_grad()
def sprite_cells(autoencoder, seed, frames=512):
    """The latents (M, z) of cells more than half sprite, and their sprite's colour (M,)."""
    clips = World(autoencoder.cfg.frame_size).sample(frames, 1, seed=seed)
    one = clips.count == 1
    video, colour = clips.video[one], clips.sprite_colour[one, 0]
    latents = autoencoder.encode(video)[:, 0]                                           # (N, z, h, w)
    share = nnf.avg_pool2d(sprite_mask(video, clips.background[one])[:, 0], 4)[:, 0]   # (N, h, w)
    keep = share > 0.5
    return latents.permute(0, 2, 3, 1)[keep], colour[:, None, None].expand_as(share)[keep]


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("autoencoder", help="a release holding an autoencoder, e.g. RUN/autoencoder.pt")
    args = parser.parse_args()
    autoencoder = tv.build(tv.load_checkpoint(args.autoencoder))[2]
    with_bias = lambda x: torch.cat([x, torch.ones(len(x), 1)], 1)
    (x_fit, y_fit), (x_test, y_test) = sprite_cells(autoencoder, 1), sprite_cells(autoencoder, 2)
    read = torch.linalg.lstsq(with_bias(x_fit), nnf.one_hot(y_fit, 4).float()).solution
    right = ((with_bias(x_test) @ read).argmax(1) == y_test).float().mean()
    print(f"{len(x_fit)} cells to fit, {len(x_test)} to score: the colour read right in {right:.3f} (chance 0.25)")


if __name__ == "__main__":
    main()
