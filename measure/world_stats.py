"""
How often and how long ground truth hides its sprites, out of the view or behind the curtains, against
what the student's sink and window can bridge: does the memory have work to do?

    python -m measure.world_stats                              tiny's world and the curtains' world
    python -m measure.world_stats --set world.arena_scale=2    another world
"""

import argparse

import torch

import tiny_videossm as tv
import train
from measure import metrics
from world import World


def world_statistics(preset, clips=256, frames=240, seed=5):
    """Prints a markdown table for this preset's world and with curtains (world.curtains=4): the share of
    sprite frames out of sight, and the hidden spans (measure.metrics.hidden_spans) per clip."""
    cfg = preset.model_config()
    window = cfg.window_chunks * cfg.chunk_frames
    bridged = (cfg.sink_chunks + cfg.window_chunks) * cfg.chunk_frames
    print(f"{clips} clips of {frames} frames (seed {seed}); the student's window holds {window} frames, sink + "
          f"window {bridged}\n")
    print(f"| world | sprite frames out of sight | hidden spans per clip | mean span (frames) | spans > {bridged} "
          f"frames per clip | spans > {2 * window} frames per clip |\n|---|--:|--:|--:|--:|--:|")
    for name, world in [(f"this preset's ({preset.world or 'the default'})", preset.world),
                        ("with curtains (world.curtains=4)", dict(curtains=4))]:
        spans, hidden, sprite_frames = [], 0, 0
        for start in range(0, clips, 32):
            batch = preset.make_world(world).sample(min(32, clips - start), frames, seed=seed + start)
            spans.append(metrics.hidden_spans(batch))
            present = (batch.sprite_colour >= 0)[:, None]  # (B, 1, S)
            hidden += ((batch.visible_area < 1) & present).sum().item()
            sprite_frames += present.sum().item() * frames
        spans = torch.cat(spans).float()
        print(f"| {name} | {hidden / sprite_frames:.1%} | {len(spans) / clips:.2f} | {spans.mean():.1f} | "
              f"{(spans > bridged).sum() / clips:.2f} | {(spans > 2 * window).sum() / clips:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m measure.world_stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help=f"whose world and student: {', '.join(train.PRESETS)} (default tiny)")
    parser.add_argument("--set", default=[], action="append", metavar="FIELD=VALUE",
                        help="change one field of the preset, as train.py's --set (repeatable)")
    parser.add_argument("--clips", type=int, default=256, help="clips of ground truth (default 256)")
    parser.add_argument("--frames", type=int, default=240, help="frames per clip (default 240)")
    parser.add_argument("--seed", type=int, default=5, help="seed of the clips (default 5)")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.frames < 1:
        parser.error(f"--clips {args.clips} --frames {args.frames}: each must be at least 1")
    try:
        preset = train.preset_from(" ".join([args.preset, *args.set]))
    except ValueError as error:
        parser.error(str(error))
    world_statistics(preset, args.clips, args.frames, args.seed)


if __name__ == "__main__":
    main()
