"""
`python docs/recall_probes.py CHECKPOINT OUT.png`: the recall probes of `python -m measure.benchmark`
(its first six, `train.sprite_returns`) as a picture. Per probe three rows: ground truth, the hybrid
student, the sink student (the same weights in sink mode); each row the last 3 frames of the
ground-truth context, then 15 frames the student made. The context runs until the sprite has been out
of sight for longer than the sink and the window hold, so a sprite that comes back in its colour in
the hybrid row was kept by the memory. About a minute on a 2-core CPU.
"""

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # the repo root
import sample  # noqa: E402
import tiny_videossm as tv  # noqa: E402
from measure.report import save_grid  # noqa: E402
from world import World, sprite_returns, with_curtains  # noqa: E402


@torch.no_grad()
def probe_grid(path, model, text_encoder, autoencoder, checkpoint, count=6):
    cfg, cf, recipe, sampling = model.cfg, model.cfg.chunk_frames, checkpoint["made_by"]["recipe"], checkpoint["sampling"]
    world = with_curtains(World(autoencoder.cfg.frame_size, **recipe["world"]))
    sigmas = tv.denoising_sigmas(sampling["denoising_steps"], sampling["timestep_shift"])
    rows = []
    for i, probe in enumerate(sprite_returns(world, cfg, count, 20 * recipe["clip_frames"], 0)):
        start, end = probe.context_chunks * cf - 3, probe.context_chunks * cf
        rows.append(probe.video[:, start:start + 18])
        for mode in ("hybrid", "sink"):
            cache = tv.StreamCache(model, 1, mode)
            tv.teacher_force(model, text_encoder, cache, autoencoder.encode(probe.video[:, :end]), probe.prompts())
            made = tv.generate(model, text_encoder, {0: probe.caption}, 5, sigmas, torch.Generator().manual_seed(i),
                               cache=cache)
            rows.append(torch.cat([probe.video[:, start:end], autoencoder.decode(torch.cat(list(made), 1))], 1))
    save_grid(path, torch.cat(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a released student, e.g. checkpoints/student.pt")
    parser.add_argument("out", help="the PNG to write")
    args = parser.parse_args()
    if not args.out.endswith(".png"):
        parser.error(f"{args.out}: the picture is a PNG; name it NAME.png")
    probe_grid(args.out, *sample.load(args.checkpoint))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
