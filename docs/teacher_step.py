"""
`python docs/teacher_step.py [--repeats 5]`: one teacher training step of `tiny`'s recipe on pixels (32x32x3
frames, patch 4: 64 tokens a frame) against the same step on the autoencoder's latents (8x8x8, patch 2: 16
tokens a frame; the frozen encoder's forward included), in turn in one process, eager: the median seconds of
each and their ratio. The clip step (4 clips of 12 frames) and the image step (48 single frames) alternate, as
in training. Random weights: a step costs the same whatever the weights.
"""

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # the repo root
import tiny_videossm as tv  # noqa: E402
import train  # noqa: E402
from world import VOCAB  # noqa: E402


def teacher_step(model, text_encoder, optimizer, video, autoencoder=None):
    """Flow matching on a batch of clips (B, F, C, H, W), as train.Teacher.train_step: forward, backward, AdamW."""
    with torch.no_grad():
        x0 = video if autoencoder is None else autoencoder.encode(video)
    sigma = torch.rand(len(video))
    loss = train.flow_matching_error(model, x0, torch.randn_like(x0), sigma, text_encoder(["a circle on blue"] * len(video)),
                                     lambda: torch.autocast("cpu", enabled=False)).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs of steps of each kind (default 5)")
    args = parser.parse_args()
    preset = train.PRESETS["tiny"]
    latent = preset.model_config(causal=False)
    pixel = dataclasses.replace(latent, frame_size=32, channels=3, patch_size=4)     # the pixel pipeline's DiT
    autoencoder = tv.FrameAutoencoder(tv.AutoencoderConfig(**preset.autoencoder)).eval().requires_grad_(False)
    world = preset.make_world()
    batches = [world.sample(preset.teacher_batch, preset.clip_frames, seed=0).video,
               world.sample(preset.image_batch, 1, seed=1).video]
    seconds = {"pixels": [], "latents": []}
    setups = {}
    for name, cfg in (("pixels", pixel), ("latents", latent)):
        torch.manual_seed(0)
        model, text_encoder = tv.VideoDiT(cfg), tv.TextEncoder(VOCAB, cfg.text_dim)
        optimizer = torch.optim.AdamW([*model.parameters(), *text_encoder.parameters()])
        setups[name] = (model, text_encoder, optimizer, autoencoder if name == "latents" else None)
        for video in batches:                                                      # warm up
            teacher_step(*setups[name][:3], video, setups[name][3])
    for _ in range(args.repeats):
        for name in seconds:                                                      # in turn, so both see the machine alike
            start = time.perf_counter()
            for video in batches:
                teacher_step(*setups[name][:3], video, setups[name][3])
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"a clip step and an image step, {torch.get_num_threads()} threads, eager, median of {args.repeats}:")
    for name, s in median.items():
        print(f"  {name}: {s:.3f} s  (all: {', '.join(f'{x:.3f}' for x in seconds[name])})")
    print(f"  pixels / latents: {median['pixels'] / median['latents']:.2f}")


if __name__ == "__main__":
    main()
