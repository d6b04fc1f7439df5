"""
Every trained model in a checkpoint folder next to ground truth and ground truth through the autoencoder
(encoded and decoded): teacher-length clips for the same captions, a row of measures each (measure.metrics),
and optionally a PNG grid of samples.

    python -m measure.report                                  checkpoints/, 16 clips
    python -m measure.report --clips 64 --grid assets/samples.png
"""

import argparse
import os

import imageio.v3 as iio
import torch
from tqdm import tqdm

import tiny_videossm as tv
import train
from measure import metrics
from world import World

MODELS = [("teacher", "teacher.pt"), ("student after stage 1", "student_stage1.pt"),
          ("student after DMD", "student_dmd.pt"), ("student", "student.pt")]


def save_grid(path, clips, scale=3):
    """Clips (B, F, C, H, W) in [-1, 1] -> a PNG, one clip per row, frames left to right."""
    B, F_, C, H, W = clips.shape
    grid = ((clips.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 3, 1, 4, 2).reshape(B * H, F_ * W, C)
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    iio.imwrite(path, grid.numpy())


@torch.no_grad()
def report(folder, clips=16, seed=12345, grid=None):
    """Teacher-length clips from each trained model in `folder` for the same captions as ground-truth
    clips: a markdown table of the measures, and optionally a PNG grid (ground truth on top)."""
    found = [(name, f) for name, f in MODELS if os.path.exists(os.path.join(folder, f))]
    if not found:
        raise SystemExit(f"no trained model in {folder}: run `python train.py` first")
    checkpoints = {}
    for name, file in found:
        try:
            checkpoints[name] = tv.load_checkpoint(os.path.join(folder, file))
        except tv.CheckpointError as error:
            raise SystemExit(str(error)) from None
    recipe = checkpoints[found[0][0]]["made_by"]["recipe"]          # the run's preset, every value of it
    autoencoder = tv.build(checkpoints[found[0][0]])[2]
    clip_frames, chunk_frames = recipe["clip_frames"], recipe["model"]["chunk_frames"]
    truth = World(autoencoder.cfg.frame_size, **recipe["world"]).sample(clips, clip_frames, seed=seed)
    captions = [c[0] for c in truth.captions]
    rows = {"ground truth": truth.video, "ground truth, encoded and decoded": autoencoder.decode(autoencoder.encode(truth.video))}
    bar = tqdm(total=len(found) * clips, desc="sampling", unit="clip")
    for name, file in found:
        bar.set_description(f"sampling the {name}")
        model, text_encoder, autoencoder = tv.build(checkpoints[name], os.path.join(folder, file))
        gen = torch.Generator().manual_seed(seed)
        if model.cfg.causal:
            sampling = checkpoints[name]["sampling"]
            sigmas = tv.denoising_sigmas(sampling["denoising_steps"], sampling["timestep_shift"])
            chunks = []
            for caption in captions:
                chunks.append(torch.cat(list(tv.generate(model, text_encoder, {0: caption}, clip_frames //
                                                         chunk_frames, sigmas, gen)), 1))
                bar.update()
            rows[name] = autoencoder.decode(torch.cat(chunks))
        else:
            rows[name] = autoencoder.decode(train.teacher_sample(model, text_encoder, captions, clip_frames,
                                                                 recipe["ode_steps"], recipe["timestep_shift"],
                                                                 recipe["guidance_scale"], gen)[0])
            bar.update(clips)
    bar.close()
    names = list(metrics.video_metrics(truth.video, chunk_frames))
    print(f"{clips} clips of {clip_frames} frames, the same captions for every row (seed {seed})\n")
    print("| | prompt match | shape match | " + " | ".join(n.replace("_", " ") for n in names) + " |")
    print("|---|--:|--:|" + "--:|" * len(names))
    for name, video in rows.items():
        measured = metrics.video_metrics(video, chunk_frames, sprites=truth.count)
        print(f"| {name} | {metrics.prompt_match(video, truth.background):.3f} | "
              f"{metrics.shape_match(video, truth.shape):.3f} | " + " | ".join(f"{measured[n]:.3f}" for n in names) + " |")
    if grid:
        save_grid(grid, torch.cat([rows[name][:4] for name in rows]))
        print(f"\nwrote {grid}: 4 clips per row group, in the order of the table")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m measure.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default="checkpoints", help="the folder train.py wrote (default checkpoints)")
    parser.add_argument("--clips", type=int, default=16, help="clips per model (default 16)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the captions and the noise (default 12345)")
    parser.add_argument("--grid", help="a PNG of sample clips to write: four per model, ground truth on top")
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error(f"--clips {args.clips}: must be at least 1")
    if args.grid and not args.grid.endswith(".png"):
        parser.error(f"--grid {args.grid}: use a .png file name")
    report(args.checkpoints, args.clips, args.seed, args.grid)


if __name__ == "__main__":
    main()
