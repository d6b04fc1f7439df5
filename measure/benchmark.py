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
from typing import NamedTuple

import torch
from tqdm import tqdm

import sample
import tiny_videossm as tv
import train
from measure import metrics

# Worlds the memory's phase never trains on, for recall that must carry over. Fixed before any phase trained on
# a family of worlds (docs/experiments.md): no preset may train on one (the suite checks).
# World fields; the curtains' width `occluder` as a share of the view (10 and 2 pixels of tiny's 32).
HELD_OUT_WORLDS = {
    "exits at the view's edge (arena_scale=2.5)": dict(arena_scale=2.5),
    "wide curtains (5/16 of the view)": dict(occluder=5 / 16),
    "slow sprites, narrow curtains (1/16; speed 0.3-0.6)": dict(occluder=1 / 16, min_speed=0.3, max_speed=0.6),
}


# The phase's own world, with the caption switched while the sprite is away (D10 keeps M); not held out.
SWITCHED = "the phase's own, a prompt switch while it is away"
# The phase's own world, a second sprite in sight while the first is away (sprite_returns' other).
ACCOMPANIED = "the phase's own, a second sprite in view (chance 1/3)"


def held_out_world(name, size):
    """The World of HELD_OUT_WORLDS[name] for a view of `size` pixels."""
    fields = HELD_OUT_WORLDS[name]
    return train.World(size, **{**fields, "occluder": round(fields.get("occluder", 0) * size)})


class RecallProbe(NamedTuple):
    """A train.Return as the recall probe reads it, with what the switched and accompanied rows add."""
    video: torch.Tensor  # (1, F, 3, H, W)
    caption: str
    colour: int          # index into SPRITE_COLOURS
    context: int         # chunks of ground truth the probe feeds
    back: int            # the frame in which a pixel of the sprite is in sight again
    clearly_back: int    # the frame in which it is clearly back
    switch: int = 0      # the chunk from which the caption is new_caption (0: none); the sprite is out of sight
    new_caption: str = ""
    other: int = -1      # the colour of the sprite that stays in sight (-1: the clip has one sprite)

    @property
    def caption_at_return(self) -> str:
        return self.new_caption if self.switch else self.caption


def sprite_returns(world, cfg, count, frames, seed, switch=False, other=False):
    """train.sprite_returns' search, as RecallProbes, for the probe's rows. switch: the caption changes
    (World.sample's switch_at) at a chunk in the middle of the absence, before the probe's context ends.
    other: two-sprite clips instead, in which one sprite is away as train.sprite_absence asks while the
    other is clearly in sight in every frame of the probe's last window of context."""
    cf, found = cfg.chunk_frames, []

    def hider(clips, b, sprites):                             # (the one of `sprites` that hides, its absence), or None
        for s in sprites:
            span = train.sprite_absence(clips.visible_area[b, :, s], cfg)
            if span is None:
                continue
            window = slice((span[0] - cfg.window_chunks) * cf, span[0] * cf)   # the probe's last window of context
            if not other or (clips.visible_area[b, window, 1 - s] >= 8).all():
                return s, span
        return None

    for batch in range(64):                                   # a search: the clips are rare, not scarce
        clips = world.sample(32, frames, seed=seed + 1000 * batch)
        found_in = {b: hider(clips, b, (0, 1) if other else (0,))
                    for b in torch.nonzero(clips.count == (2 if other else 1)).flatten().tolist()}
        found_in, chunk = {b: h for b, h in found_in.items() if h}, [0] * 32
        if switch:                # the same clips, switched in the middle of each absence; the new shape covers
            for b, (_, (context, _, _, hidden_at)) in found_in.items():  # other pixels, so look at them again
                chunk[b] = (math.ceil(hidden_at / cf) + context) // 2
            clips = world.sample(32, frames, seed=seed + 1000 * batch, switch_at=[max(1, c) * cf for c in chunk])
            found_in = {b: hider(clips, b, (s,)) for b, (s, _) in found_in.items()}   # the same sprite hides
        for b, h in found_in.items():
            if h:
                (s, (context, back, clearly_back, _)), colour = h, clips.sprite_colour[b]
                found.append(RecallProbe(clips.video[b:b + 1], clips.captions[b][0], int(colour[s]), context, back,
                                         clearly_back, chunk[b], clips.captions[b][-1] if switch else "",
                                         int(colour[1 - s]) if other else -1))
                if len(found) == count:
                    return found
    return found


def feed_context(model, text_encoder, cache, probe, chunks):
    """train.feed_context, with the probe's prompt switch re-cached where it happens (D10: M is kept): the
    cache is then as if the model had streamed those frames under those prompts."""
    cf, device = model.cfg.chunk_frames, next(model.parameters()).device
    cut = min(probe.switch or chunks, chunks)
    train.feed_context(model, text_encoder, cache, probe, cut)
    if cut < chunks:
        tv.recache(model, cache, text_encoder([probe.new_caption]))
        tv.teacher_force(model, cache, probe.video[:, cut * cf:chunks * cf].to(device))


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
def recall(model, text_encoder, probe, mode, sigmas, seed):
    """The recall probe on one RecallProbe (or train.Return): ground truth through the clean pass up to chunk
    `probe.context` (feed_context; the sink and the window then show none of the sprite), then the
    model streams until four chunks after the sprite is clearly back, scored by metrics.recalled: 1 if the sprite
    colour it shows most is the sprite's own, else 0; with a second sprite in view (probe.other), of the colours
    other than that one's. Ground truth scores 1; a model without memory of the clip, chance (1 / 4; 1 / 3 with a second sprite)."""
    cf, device = model.cfg.chunk_frames, next(model.parameters()).device
    probe = RecallProbe(*probe)                                  # a train.Return: no switch, one sprite
    cache = tv.StreamCache(model, 1, mode, device=device)
    feed_context(model, text_encoder, cache, probe, probe.context)
    made = math.ceil(probe.clearly_back / cf) + 4 - probe.context
    video = torch.cat(list(tv.generate(model, text_encoder, {0: probe.caption_at_return}, made, sigmas,
                                       torch.Generator().manual_seed(seed), cache=cache)), 1)
    return metrics.recalled(video, probe.colour, leave_out=probe.other)


def one_sprite_clips(preset, cfg, videos, frames, seed):
    """The benchmark's ground truth: clips of the preset's world from `seed`, and the indices of the
    first `videos` with one sprite (identity is defined for them). Their first captions are its prompts."""
    truth = train.World(cfg.frame_size, **preset.world).sample(4 * videos, frames, seed=seed)
    return truth, torch.nonzero(truth.count == 1).flatten()[:videos]


@torch.no_grad()
def streamed_videos(model, text_encoder, prompts, frames, sigmas, seed, mode, after_batch=lambda: None):
    """Every prompt streamed for `frames` frames in `mode`, 16 at once, batch n from noise seed + n:
    (N, F, C, H, W) on the CPU."""
    made = []
    for n, start in enumerate(range(0, len(prompts), 16)):
        batch = prompts[start:start + 16]
        made.append(torch.cat(list(tv.generate(model, text_encoder, {0: batch}, frames // model.cfg.chunk_frames, sigmas,
                                               torch.Generator().manual_seed(seed + n), mode,
                                               batch_size=len(batch))), 1).cpu())
        after_batch()
    return torch.cat(made)


@torch.no_grad()
def benchmark(model, text_encoder, preset, modes, videos, frames, steps, seed, held_out=True):
    """Every mode of `modes` streams the same prompts (one sprite each) and seeds for `frames` frames:
    the measures per video, frames/s and the cache's peak size, ground truth on top; then the recall
    probe on the phase's world and (held_out) on HELD_OUT_WORLDS; then hybrid minus each other mode
    with paired intervals. Prints the tables."""
    cfg = model.cfg
    sigmas = tv.denoising_sigmas(steps, preset.shift)
    truth, keep = one_sprite_clips(preset, cfg, videos, frames, seed)
    video_of = {"ground truth": truth.video[keep]}
    prompts, shapes = [truth.captions[b][0] for b in keep], truth.shape[keep]
    trained_world = train.recall_world(preset, cfg)
    worlds = {"the phase's own": trained_world, SWITCHED: trained_world, ACCOMPANIED: trained_world,
              **({name: held_out_world(name, cfg.frame_size) for name in HELD_OUT_WORLDS} if held_out else {})}
    probes = {name: sprite_returns(world, cfg, videos, frames, seed, switch=name == SWITCHED, other=name == ACCOMPANIED)
              for name, world in worlds.items()}
    speed, peak, recalled = {}, {}, {name: {} for name in worlds}                # recalled[world][mode]: (N,)
    steps_per_mode = math.ceil(len(prompts) / 16) + 1 + sum(map(len, probes.values()))
    with tqdm(total=len(modes) * steps_per_mode, desc="benchmark", unit="step") as bar:
        for mode in modes:
            bar.set_description(f"benchmark: {mode}")
            video_of[mode] = streamed_videos(model, text_encoder, prompts, frames, sigmas, seed, mode, bar.update)
            cache = tv.StreamCache(model, 1, mode, device=next(model.parameters()).device)
            started, peak[mode] = time.time(), 0
            for _ in tv.generate(model, text_encoder, {0: prompts[0]}, frames // cfg.chunk_frames, sigmas,
                                 torch.Generator().manual_seed(seed), cache=cache):   # one stream, timed
                peak[mode] = max(peak[mode], cache_bytes(cache))
            speed[mode] = frames / (time.time() - started)
            bar.update()
            for name, world_probes in probes.items():
                recalled[name][mode] = torch.zeros(len(world_probes))
                for i, probe in enumerate(world_probes):
                    recalled[name][mode][i] = recall(model, text_encoder, probe, mode, sigmas, seed + i)
                    bar.update()
    per_video = {}                                                          # measure -> mode -> (N,)
    for name, video in video_of.items():
        clips = [v[None] for v in video]                                    # each video on its own
        scores = {"fidelity": map(metrics.fidelity, clips), "sprite presence": map(metrics.sprite_presence, clips),
                  "shape match": map(metrics.shape_match, clips, shapes[:, None]),
                  "identity kept": metrics.identity_kept(video).tolist(),
                  "subject consistency": map(metrics.subject_consistency, clips),
                  "background consistency": map(metrics.background_consistency, clips),
                  "dynamic degree": map(metrics.dynamic_degree, clips), "flicker": map(metrics.flicker, clips)}
        for measure, values in scores.items():
            per_video.setdefault(measure, {})[name] = torch.tensor(list(values))
    own = probes["the phase's own"]
    per_video["recall"] = {"ground truth": torch.ones(len(own)), **recalled["the phase's own"]}
    print(f"\n{len(prompts)} videos of {frames} frames ({frames // preset.clip_frames} teacher clips), one sprite "
          f"each, {steps} steps, the same prompts and seeds in every row. Recall: {len(own)} ground-truth "
          f"clips{' with curtains (world.occluder=4)' if not preset.world.get('occluder') else ''} fed as context until "
          f"the sprite has been out of sight longer than sink + window hold; chance {1 / len(train.SPRITE_COLOURS):.2f}\n")
    print("| | " + " | ".join(per_video) + " | frames/s, one stream | peak cache |\n|---|"
          + "--:|" * (len(per_video) + 2))
    for name in video_of:
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
    unseen = ", and worlds it never trains on (measure.benchmark.HELD_OUT_WORLDS)" if held_out else ""
    print(f"\nrecall by world: the phase's own ({trained_world.occluder}-pixel curtains), as it is, with a prompt "
          f"switch while the sprite is away and with a second sprite in view{unseen}; chance "
          f"{1 / len(train.SPRITE_COLOURS):.2f} unless the row says\n\n"
          "| world | probes | " + " | ".join(modes) + "".join(f" | hybrid - {m}" for m in others) + " |\n|---|--:|"
          + "--:|" * (len(modes) + len(others)))
    for name, by_mode in recalled.items():
        print(f"| {name} | {len(by_mode['hybrid'])} | " + " | ".join(f"{by_mode[m].nanmean():.3f}" for m in modes)
              + "".join(f" | {interval_cell(by_mode['hybrid'], by_mode[m])}" for m in others) + " |")


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
    model, text_encoder, preset = sample.load_student(parser, args)
    cf = model.cfg.chunk_frames
    frames = 20 * preset.clip_frames if args.frames is None else args.frames
    if frames < 2 * cf:
        parser.error(f"--frames {frames}: the benchmark compares whole chunks, at least two ({2 * cf} frames)")
    benchmark(model, text_encoder, preset, modes, args.videos, frames - frames % cf, args.steps, args.seed,
              held_out=not args.no_held_out)


if __name__ == "__main__":
    main()
