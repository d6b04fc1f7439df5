"""
`python docs/identity_pair.py A.pt B.pt [--seeds 0,1000]`: identity kept, checkpoint A against B, on
the benchmark's own videos (`python -m measure.benchmark`: 32 one-sprite prompts per seed, 240 frames,
hybrid mode, the same prompts and noise), so the two are paired video by video: the mean of A - B and
its paired bootstrap 95% interval. Also what the late frames show: how often each sprite colour, and
how often a video's sprite changes colour. About 2 minutes per checkpoint and seed on a 2-core CPU.
"""

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # the repo root
import sample  # noqa: E402
import tiny_videossm as tv  # noqa: E402
from world import SPRITE_COLOURS, World  # noqa: E402
from measure import metrics  # noqa: E402
from measure.benchmark import interval_cell, one_sprite_clips, streamed_videos  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="a student checkpoint")
    parser.add_argument("b", help="the student checkpoint it is compared with")
    parser.add_argument("--seeds", default="0,1000", help="the benchmark's --seed values, comma-separated")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(2)
    kept = {}
    for path in (args.a, args.b):
        model, text_encoder, autoencoder, checkpoint = sample.load(path)
        recipe, sampling = checkpoint["made_by"]["recipe"], checkpoint["sampling"]
        frames = 20 * recipe["clip_frames"]
        sigmas = tv.denoising_sigmas(sampling["denoising_steps"], sampling["timestep_shift"])
        made = []
        for seed in seeds:                                                  # the benchmark's prompts and noise
            truth, keep = one_sprite_clips(World(autoencoder.cfg.frame_size, **recipe["world"]), 32, frames, seed)
            made.append(streamed_videos(model, text_encoder, autoencoder, [truth.captions[b][0] for b in keep], frames, sigmas,
                                        seed, "hybrid"))
        videos = torch.cat(made)
        kept[path] = metrics.identity_kept(videos)
        _, sprite = metrics.read_attributes(videos)                         # (N, F), -1: none
        late = sprite[:, sprite.shape[1] // 2:]
        changes = [(t[t >= 0][1:] != t[t >= 0][:-1]).sum().item() for t in late]
        print(f"{path}: identity kept {kept[path].nanmean():.3f}; late sprite frames per colour "
              f"{dict(zip(SPRITE_COLOURS, torch.bincount(late[late >= 0], minlength=4).tolist()))}; "
              f"colour changes per video {sum(changes) / len(changes):.2f}")
    print(f"identity kept, A - B over {len(kept[args.a])} videos: {interval_cell(kept[args.a], kept[args.b])}")


if __name__ == "__main__":
    main()
