"""
The memory modes side by side on long videos: every mode streams the same one-sprite prompts with the
same seeds, each video is measured on its own (measure.metrics), and hybrid is compared with each other
mode by paired bootstrap intervals. Then the recall probe: ground truth fed as context until a sprite has
been out of sight longer than the sink and the window hold; does the sprite that comes back have its colour?
It runs on the world the memory's phase trains on (as it is, with a prompt switch while the sprite is away,
and with a second sprite in view meanwhile) and on worlds it never sees (HELD_OUT_WORLDS).

    python -m measure.benchmark --threads 2                         all five modes (full takes most of the time)
    python -m measure.benchmark --modes hybrid,sink,window --videos 8 --no-held-out
"""

import argparse
import math
import time

import torch
from tqdm import tqdm

import sample
import tiny_videossm as tv
from measure import metrics
from world import SPRITE_COLOURS, World, sprite_returns, with_curtains

# Worlds the memory's phase never trains on, for recall that must carry over. Fixed before any phase trained on
# a family of worlds (docs/experiments.md): no preset may train on one (the suite checks).
# World fields; the curtains' width as a share of the view, `curtain_share` (10 and 2 pixels of tiny's 32).
HELD_OUT_WORLDS = {
    "exits at the view's edge (arena_scale=2.5)": dict(arena_scale=2.5),
    "wide curtains (5/16 of the view)": dict(curtain_share=5 / 16),
    "slow sprites, narrow curtains (1/16; speed 0.3-0.6)": dict(curtain_share=1 / 16, min_speed=0.3, max_speed=0.6),
}


# The phase's own world, with the caption switched while the sprite is away (D10 keeps M); not held out.
SWITCHED = "the phase's own, a prompt switch while it is away"
# The phase's own world, a second sprite in sight while the first is away (sprite_returns' other).
ACCOMPANIED = "the phase's own, a second sprite in view (chance 1/3)"


def held_out_world(name, size):
    """The World of HELD_OUT_WORLDS[name] for a view of `size` pixels."""
    fields = dict(HELD_OUT_WORLDS[name])
    curtains = round(fields.pop("curtain_share", 0) * size)
    return World(size, **fields, curtains=curtains)


def cache_bytes(cache):
    """What a StreamCache holds: K, V, gates and M over all layers, in bytes."""
    tensors = [t for layer in cache.layers for t in (layer.k, layer.v, layer.g, layer.beta, layer.state)
               if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def paired_interval(a, b, draws=2000, seed=0):
    """The mean of a - b over the videos both scored (a, b: (N,) per video, NaN = not scored), and its
    paired bootstrap 95% interval: resample the videos, not the two modes separately."""
    difference = (a - b)[~(a.isnan() | b.isnan())]
    if len(difference) < 2:
        return math.nan, math.nan, math.nan
    picks = torch.randint(len(difference), (draws, len(difference)), generator=torch.Generator().manual_seed(seed))
    low, high = difference[picks].mean(1).quantile(torch.tensor([0.025, 0.975]))
    return difference.mean().item(), low.item(), high.item()


def interval_cell(a, b):
    """A table cell: the mean of a - b [its paired 95% interval], ** where the interval excludes 0."""
    mean, low, high = paired_interval(a, b)
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{' **' if low > 0 or high < 0 else ''}"


@torch.no_grad()
def recall(model, text_encoder, autoencoder, probe, mode, sigmas, seed):
    """The recall probe on one world.Return: ground truth through the clean pass up to chunk
    `probe.context_chunks` (the sink and the window then show none of the sprite), then the
    model streams until four chunks after the sprite is clearly back, scored by metrics.recalled: 1 if the sprite
    colour it shows most is the sprite's own, else 0; with a second sprite in view (probe.other), of the colours
    other than that one's. Ground truth scores 1; a model without memory of the clip, chance (1 / 4; 1 / 3 with a second sprite)."""
    cf, device = model.cfg.chunk_frames, next(model.parameters()).device
    cache = tv.StreamCache(model, 1, mode, device=device)
    context = autoencoder.encode(probe.video[:, :probe.context_chunks * cf].to(device))
    tv.teacher_force(model, text_encoder, cache, context, probe.prompts())
    made = math.ceil(probe.clearly_back / cf) + 4 - probe.context_chunks
    caption_at_return = probe.new_caption if probe.switch else probe.caption
    video = autoencoder.decode(torch.cat(list(tv.generate(model, text_encoder, {0: caption_at_return}, made, sigmas,
                                                          torch.Generator().manual_seed(seed), cache=cache)), 1))
    return metrics.recalled(video, probe.colour, leave_out=probe.other)


def one_sprite_clips(world, videos, frames, seed):
    """The benchmark's ground truth: clips of the student's world from `seed`, and the indices of the
    first `videos` with one sprite (identity is defined for them). Their first captions are its prompts."""
    truth = world.sample(4 * videos, frames, seed=seed)
    return truth, torch.nonzero(truth.count == 1).flatten()[:videos]


@torch.no_grad()
def streamed_videos(model, text_encoder, autoencoder, prompts, frames, sigmas, seed, mode, after_batch=lambda: None):
    """Every prompt streamed for `frames` frames in `mode`, 16 at once, batch n from noise seed + n, decoded:
    (N, F, C, H, W) on the CPU."""
    made = []
    for n, start in enumerate(range(0, len(prompts), 16)):
        batch = prompts[start:start + 16]
        latents = torch.cat(list(tv.generate(model, text_encoder, {0: batch}, frames // model.cfg.chunk_frames, sigmas,
                                             torch.Generator().manual_seed(seed + n), mode, batch_size=len(batch))), 1)
        made.append(autoencoder.decode(latents).cpu())
        after_batch()
    return torch.cat(made)


def probe_sets(world, cfg, videos, frames, seed, held_out):
    """The recall probes of every row: the phase's own world (as it is, switched, with a second sprite) and,
    with held_out, HELD_OUT_WORLDS. {row name: [world.Return]}"""
    worlds = {"the phase's own": world, SWITCHED: world, ACCOMPANIED: world,
              **({name: held_out_world(name, world.size) for name in HELD_OUT_WORLDS} if held_out else {})}
    return {name: sprite_returns(w, cfg, videos, frames, seed, switch=name == SWITCHED, other=name == ACCOMPANIED)
            for name, w in worlds.items()}


@torch.no_grad()
def run_modes(model, text_encoder, autoencoder, modes, prompts, probes, frames, sigmas, seed):
    """Each mode streams every prompt, then one stream timed alone (frames/s, the cache's peak), then every
    recall probe. Returns {mode: videos (N, F, C, H, W)}, {mode: frames/s}, {mode: peak bytes} and
    {row: {mode: (N,) recalled}}."""
    cf, device = model.cfg.chunk_frames, next(model.parameters()).device
    videos, speed, peak, recalled = {}, {}, {}, {name: {} for name in probes}
    steps_per_mode = math.ceil(len(prompts) / 16) + 1 + sum(map(len, probes.values()))
    with tqdm(total=len(modes) * steps_per_mode, desc="benchmark", unit="step") as bar:
        for mode in modes:
            bar.set_description(f"benchmark: {mode}")
            videos[mode] = streamed_videos(model, text_encoder, autoencoder, prompts, frames, sigmas, seed, mode,
                                           bar.update)
            cache = tv.StreamCache(model, 1, mode, device=device)
            started, peak[mode] = time.time(), 0
            for latents in tv.generate(model, text_encoder, {0: prompts[0]}, frames // cf, sigmas,
                                       torch.Generator().manual_seed(seed), cache=cache):   # one stream, timed
                autoencoder.decode(latents)
                peak[mode] = max(peak[mode], cache_bytes(cache))
            speed[mode] = frames / (time.time() - started)
            bar.update()
            for name, row in probes.items():
                recalled[name][mode] = torch.zeros(len(row))
                for i, probe in enumerate(row):
                    recalled[name][mode][i] = recall(model, text_encoder, autoencoder, probe, mode, sigmas, seed + i)
                    bar.update()
    return videos, speed, peak, recalled


def score(videos, shapes):
    """Every measure of every video on its own: {measure: {row: (N,)}}. videos: {row: (N, F, C, H, W)}."""
    per_video = {}
    for name, video in videos.items():
        clips = [v[None] for v in video]                                    # each video on its own
        scores = {"fidelity": map(metrics.fidelity, clips), "sprite presence": map(metrics.sprite_presence, clips),
                  "shape match": map(metrics.shape_match, clips, shapes[:, None]),
                  "identity kept": metrics.identity_kept(video).tolist(),
                  "subject consistency": map(metrics.subject_consistency, clips),
                  "background consistency": map(metrics.background_consistency, clips),
                  "dynamic degree": map(metrics.dynamic_degree, clips), "flicker": map(metrics.flicker, clips)}
        for measure, values in scores.items():
            per_video.setdefault(measure, {})[name] = torch.tensor(list(values))
    return per_video


def print_tables(per_video, recalled, speed, peak, modes, held_out, recall_caption):
    """The three tables: every measure per row, hybrid minus each mode, recall by world (under its caption)."""
    print("| | " + " | ".join(per_video) + " | frames/s, one stream | peak cache |\n|---|"
          + "--:|" * (len(per_video) + 2))
    for name in per_video["fidelity"]:
        print(f"| {name} | " + " | ".join(f"{values[name].nanmean():.3f}" for values in per_video.values())
              + (f" | {speed[name]:.1f} | {peak[name] / 2 ** 20:.2f} MB |" if name in speed else " | | |"))
    others = [mode for mode in modes if mode != "hybrid"]
    if others:
        print("\nhybrid minus each mode: the mean difference [paired bootstrap 95% interval]; ** where the interval "
              "excludes 0\n\n| | " + " | ".join(f"hybrid - {m}" for m in others) + " |\n|---|" + "--:|" * len(others))
        for measure, values in per_video.items():
            print(f"| {measure} | " + " | ".join(interval_cell(values["hybrid"], values[m]) for m in others) + " |")
    if held_out:
        recalled["held out, all"] = {m: torch.cat([recalled[name][m] for name in HELD_OUT_WORLDS]) for m in modes}
    print(f"\n{recall_caption}\n\n| world | probes | " + " | ".join(modes) + "".join(f" | hybrid - {m}" for m in others) + " |\n|---|--:|"
          + "--:|" * (len(modes) + len(others)))
    for name, by_mode in recalled.items():
        print(f"| {name} | {len(by_mode['hybrid'])} | " + " | ".join(f"{by_mode[m].nanmean():.3f}" for m in modes)
              + "".join(f" | {interval_cell(by_mode['hybrid'], by_mode[m])}" for m in others) + " |")


def benchmark(model, text_encoder, autoencoder, checkpoint, modes, videos, frames, steps, seed, held_out=True):
    """Every mode of `modes` streams the same prompts (one sprite each) and seeds for `frames` frames:
    the measures per video, frames/s and the cache's peak size, ground truth on top; then the recall
    probe on the phase's world and (held_out) on HELD_OUT_WORLDS; then hybrid minus each other mode
    with paired intervals. Prints the tables."""
    cfg, recipe = model.cfg, checkpoint["made_by"]["recipe"]
    sigmas = tv.denoising_sigmas(steps, checkpoint["sampling"]["timestep_shift"])
    world = World(autoencoder.cfg.frame_size, **recipe["world"])
    truth, keep = one_sprite_clips(world, videos, frames, seed)
    prompts, shapes = [truth.captions[b][0] for b in keep], truth.shape[keep]
    probes = probe_sets(with_curtains(world), cfg, videos, frames, seed, held_out)
    made, speed, peak, recalled = run_modes(model, text_encoder, autoencoder, modes, prompts, probes, frames, sigmas, seed)
    with torch.no_grad():                                  # ground truth through the autoencoder, a video at a time
        decoded = lambda video: torch.cat([autoencoder.decode(autoencoder.encode(v[None])) for v in video])
        through = "ground truth, encoded and decoded"
        per_video = score({"ground truth": truth.video[keep], through: decoded(truth.video[keep]), **made}, shapes)
        own, cf = probes["the phase's own"], model.cfg.chunk_frames        # and what recall reads of its probes
        after = [decoded(p.video[:, p.context_chunks * cf:(math.ceil(p.clearly_back / cf) + 4) * cf]) for p in own]
    per_video["recall"] = {"ground truth": torch.ones(len(own)),
                           through: torch.tensor([metrics.recalled(v, p.colour) for v, p in zip(after, own)]),
                           **recalled["the phase's own"]}
    print(f"\n{len(prompts)} videos of {frames} frames ({frames // recipe['clip_frames']} teacher clips), one sprite "
          f"each, {steps} steps, the same prompts and seeds in every row. Recall: {len(own)} ground-truth "
          f"clips{' with curtains (world.curtains=4)' if not world.curtains else ''} fed as context until "
          f"the sprite has been out of sight longer than sink + window hold; chance {1 / len(SPRITE_COLOURS):.2f}\n")
    unseen = ", and worlds it never trains on (measure.benchmark.HELD_OUT_WORLDS)" if held_out else ""
    print_tables(per_video, recalled, speed, peak, modes, held_out,
                 f"recall by world: the phase's own ({with_curtains(world).curtains}-pixel curtains), as it is, with a "
                 f"prompt switch while the sprite is away and with a second sprite in view{unseen}; chance "
                 f"{1 / len(SPRITE_COLOURS):.2f} unless the row says")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m measure.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(tv.MODES),
                        help="the modes to compare, comma-separated, hybrid among them (default: all five)")
    parser.add_argument("--videos", type=int, default=32, help="videos per mode, and recall probes (default 32)")
    parser.add_argument("--frames", type=int, help="frames per video (default: 20 teacher clips)")
    parser.add_argument("--no-held-out", action="store_true",
                        help="the recall probe on the phase's own world only (as it is, with a switch, with a "
                             "second sprite in view), not on the held-out worlds")
    sample.add_student_arguments(parser)
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(","))
    if any(m not in tv.MODES for m in modes) or "hybrid" not in modes or len(set(modes)) != len(modes):
        parser.error(f"--modes {args.modes}: name each of {', '.join(tv.MODES)} at most once, hybrid among them "
                     f"(the others are compared with it)")
    if args.videos < 1:
        parser.error(f"--videos {args.videos}: must be at least 1")
    model, text_encoder, autoencoder, checkpoint = sample.load_student(parser, args)
    cf = model.cfg.chunk_frames
    frames = 20 * checkpoint["made_by"]["recipe"]["clip_frames"] if args.frames is None else args.frames
    if frames < 2 * cf:
        parser.error(f"--frames {frames}: the benchmark compares whole chunks, at least two ({2 * cf} frames)")
    benchmark(model, text_encoder, autoencoder, checkpoint, modes, args.videos, frames - frames % cf, args.steps, args.seed,
              held_out=not args.no_held_out)


if __name__ == "__main__":
    main()
