"""
`python docs/recall_colour.py OUT_DIR`: an experiment of docs/experiments.md ("The memory asked for the
colour of its own samples"), not part of the shipped pipeline. From a released student, only the memory's
weights (GatedDeltaMemory) train, on one question: after ground-truth context in which a sprite left
sight longer than sink and window hold, does the sprite the student brings back have its colour?
A step: two one-sprite curtain clips of 72 frames with such a return (train.memory_return_chunk = r);
the ground truth up to chunk r goes into the cache in the graph (the write path learns); the student
makes chunks r and r + 1 with its own few-step chain, the last step (a random exit step) with autograd
on, and a frozen copy of the starting student predicts from the same input. Loss: where the frozen copy
draws a sprite, a per-pixel cross-entropy over the four sprite colours (the pixel may move towards the
true colour, not out of the sprite colours); everywhere else, the squared difference to the frozen
copy's output. About 30-40 minutes for 300 steps alone on the 2-core CPU (run t43). Writes OUT_DIR/student.pt, for
`python sample.py --benchmark --checkpoint OUT_DIR/student.pt`, and OUT_DIR/probes.png (per probe:
ground truth, hybrid, sink; the last 3 context frames, then 15 made).
"""

import argparse
import os
import pathlib
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))   # the repo root
import sample  # noqa: E402
import tiny_videossm as tv  # noqa: E402
import train  # noqa: E402


def recall_clips(world, cfg, count, frames, generator):
    """`count` one-sprite clips whose sprite comes back where only the memory saw it, at least two
    chunks before the end: (clip (1, F, 3, H, W), caption, colour index, return chunk) each."""
    found = []
    while len(found) < count:
        clips = world.sample(16, frames, seed=int(torch.randint(2 ** 62, (1,), generator=generator)))
        returns = train.memory_return_chunk(clips, cfg)
        usable = (returns >= 0) & (returns <= frames // cfg.chunk_frames - 2) & (clips.count == 1)
        for b in torch.nonzero(usable).flatten().tolist():
            found.append((clips.video[b:b + 1], clips.captions[b][0], int(clips.sprite_colour[b, 0]),
                          int(returns[b])))
    return found[:count]


def masked_colour_loss(x0, frozen_x0, background, colour, anchor_weight):
    """x0, frozen_x0: (1, F, 3, H, W), the trained and the frozen student's predictions from one input."""
    away = lambda rgb: (frozen_x0 - rgb.view(1, 1, 3, 1, 1)).square().sum(2, keepdim=True) > 0.25
    sprite = (away(train.BACKGROUND_RGB[background]) & away(train.OCCLUDER_RGB)).float()   # (1, F, 1, H, W)
    logits = -(x0.movedim(2, -1)[..., None, :] - train.SPRITE_RGB).square().sum(-1)        # (1, F, H, W, 4)
    log_p = torch.log_softmax(logits, -1)
    where = sprite[:, :, 0]                                                                 # (1, F, H, W)
    cross_entropy = -(log_p[..., colour] * where).sum() / where.sum().clamp_min(1.0)
    anchor = ((x0 - frozen_x0).square() * (1 - sprite)).mean()
    right = bool((log_p.exp() * where[..., None]).flatten(0, -2).sum(0).argmax() == colour)
    return cross_entropy + anchor_weight * anchor, right


def make_return(model, frozen, text_encoder, clip, caption, r, sigmas, generator):
    """Ground truth up to chunk r into both students' caches; chunks r and r + 1 made by the trained
    student's chain (the exit step in the graph), the frozen student's prediction at that step beside it."""
    cf = model.cfg.chunk_frames
    caches = []
    for student, in_graph in ((model, True), (frozen, False)):
        with torch.set_grad_enabled(in_graph):
            cache = tv.StreamCache(student, 1)
            cache.set_prompt(student, text_encoder([caption]))
            tv.teacher_force(student, cache, clip[:, :r * cf])
        caches.append(cache)
    exit_step = int(torch.randint(len(sigmas), (1,), generator=generator))
    made, frozen_made = [], []
    for _ in range(2):
        x = torch.randn(clip[:, :cf].shape, generator=generator)
        for i in range(exit_step + 1):
            sigma = torch.full((1,), sigmas[i])
            with torch.set_grad_enabled(i == exit_step):
                x0 = tv.x0_from_velocity(x, model.forward_chunk(x, 1000 * sigma, caches[0]), sigma)
            if i < exit_step:
                x = tv.add_noise(x0, torch.randn(x.shape, generator=generator), torch.full((1,), sigmas[i + 1]))
        with torch.no_grad():
            frozen_made.append(tv.x0_from_velocity(x, frozen.forward_chunk(x, 1000 * sigma, caches[1]), sigma))
            frozen.forward_chunk(x0.detach(), 0.0, caches[1], write=True)
        model.forward_chunk(x0.detach(), 0.0, caches[0], write=True)       # (D8) the clean pass, in the graph
        made.append(x0)
    return torch.cat(made, 1), torch.cat(frozen_made, 1)


@torch.no_grad()
def probe_grid(path, model, text_encoder, preset, count=6):
    cfg, cf = model.cfg, model.cfg.chunk_frames
    world = train.World(cfg.frame_size, **{**preset.world, "occluder": 4})
    sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.shift)
    rows = []
    for i, (clip, caption, _, context, _) in enumerate(sample.recall_clips(world, cfg, count, 20 * preset.clip_frames, 0)):
        start = context * cf - 3
        rows.append(clip[:, start:start + 18])
        for mode in ("hybrid", "sink"):
            cache = tv.StreamCache(model, 1, mode)
            cache.set_prompt(model, text_encoder([caption]))
            tv.teacher_force(model, cache, clip[:, :context * cf])
            made = tv.generate(model, text_encoder, {0: caption}, 5, sigmas, torch.Generator().manual_seed(i), cache=cache)
            rows.append(torch.cat([clip[:, start:context * cf], *made], 1))
    train.save_grid(path, torch.cat(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder for student.pt and probes.png (made if missing)")
    parser.add_argument("--checkpoint", default="checkpoints/student.pt", help="the released student to start from")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps, two clips each (default 300)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's learning rate for the memory's weights")
    parser.add_argument("--anchor", type=float, default=10.0, help="weight of the squared difference off the sprite")
    args = parser.parse_args()
    if args.steps < 1 or args.lr <= 0 or args.anchor < 0:
        parser.error("--steps must be at least 1, --lr above 0 and --anchor at least 0")
    try:
        checkpoint = train.load_checkpoint(args.checkpoint)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(2)
    model, text_encoder = train.build(checkpoint)
    frozen = train.build(checkpoint)[0].eval().requires_grad_(False)
    preset = train.preset_from(checkpoint["preset"])
    generator = torch.Generator().manual_seed(0)
    memory = [p for name, p in model.named_parameters() if ".memory." in name]
    for name, p in model.named_parameters():
        p.requires_grad_(".memory." in name)
    model.train()
    optimizer = torch.optim.AdamW(memory, lr=args.lr, betas=(0.9, 0.99))
    world = train.World(model.cfg.frame_size, **{**preset.world, "occluder": 4})
    sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.shift)
    progress = tqdm(range(args.steps), desc="memory recall")
    for step in progress:
        loss, right = 0.0, 0
        for clip, caption, colour, r in recall_clips(world, model.cfg, 2, 72, generator):
            made, frozen_made = make_return(model, frozen, text_encoder, clip, caption, r, sigmas, generator)
            background = train.BACKGROUND_NAMES.index(caption.split()[-1])
            clip_loss, clip_right = masked_colour_loss(made, frozen_made, background, colour, args.anchor)
            loss, right = loss + clip_loss / 2, right + clip_right
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(memory, 1.0)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", colour_right=f"{right}/2")
    model.eval()
    os.makedirs(args.out_dir, exist_ok=True)
    train.release(os.path.join(args.out_dir, "student.pt"), 2, checkpoint["preset"], model, text_encoder, [])
    probe_grid(os.path.join(args.out_dir, "probes.png"), model, text_encoder, preset)
    print(f"wrote {args.out_dir}/student.pt and probes.png")


if __name__ == "__main__":
    main()
