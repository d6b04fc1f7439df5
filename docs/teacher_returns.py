"""
Does a teacher know that a sprite which leaves sight comes back in its own colour? Issue "the paper's own
recipe teaches the memory", step 1: measured on the teacher's own samples, before any student is built on it.

    python docs/teacher_returns.py [RUN] [--frames 24] [--steps 0] [--clips 128] [--train 0]

RUN is a run's folder (teacher.pt; default checkpoints/). With `--train` the script first trains a teacher there from
scratch, stage 0 of `tiny` as train.py runs it, its clips `--frames` long and drawn from the preset's world and the
memory phase's family of worlds in turn (resumable: the same command goes on). It samples the teacher at `--frames`
frames; with `--steps` it then fine-tunes a copy on clips of that length, drawn in turn from the preset's world and the
memory phase's family of worlds (never the held-out ones), and writes RUN/teacher_long.pt; it samples
RUN/teacher_long.pt too whenever there is one.
For one-sprite clips (ground truth of the same worlds, then each teacher's samples) it prints how many show a
sprite that leaves sight for at least `--absence` frames and comes back, told apart as exits (at the view's edge
or a curtain, as the world's sprites leave) and blinks (inside the view, which the world never draws), and of the
exits the share whose colour after the return is the colour of its first appearance (measure.metrics.
colour_after_exit: ground truth 1, a teacher that forgot 1/4).
"""

import argparse
import contextlib
import os
import sys
import time
import types

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tiny_videossm as tv  # noqa: E402
import train  # noqa: E402
from measure.metrics import exit_colours, identity_kept, long_absences  # noqa: E402
from world import BACKGROUNDS, SHAPES, SPRITE_COLOURS, Caption, World, sprite_mask  # noqa: E402


def summary(name, frames, absence):
    """A table row: clips, exits and blinks among them, identity kept, and the colour kept after the exits with a
    bootstrap interval, beside what the same colours would score paired at random (the clips' own chance)."""
    spans = long_absences(frames, absence)
    exits, blinks = (sum(any(e == kind for *_, e in s) for s in spans) for kind in (True, False))
    identity = identity_kept(frames).nanmean().item()
    first, back = exit_colours(frames, absence)
    scored = (first == back)[back >= 0].float()
    if len(scored) == 0:
        return f"| {name} | {len(frames)} | {exits} | {blinks} | {identity:.3f} | | |"
    draws = scored[torch.randint(len(scored), (2000, len(scored)), generator=torch.Generator().manual_seed(0))]
    low, high = draws.mean(1).quantile(torch.tensor([0.025, 0.975])).tolist()
    share = lambda colours: torch.bincount(colours[back >= 0], minlength=len(SPRITE_COLOURS)).float() / len(scored)
    chance = (share(first) * share(back)).sum().item()
    return (f"| {name} | {len(frames)} | {exits} | {blinks} | {identity:.3f} | {scored.mean():.3f} [{low:.3f}, "
            f"{high:.3f}] | {chance:.3f} |")


def one_sprite_captions(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [Caption(1, int(torch.randint(len(SHAPES), (1,), generator=gen)),
                    int(torch.randint(len(BACKGROUNDS), (1,), generator=gen))).text() for _ in range(n)]


@torch.no_grad()
def samples(teacher, text_encoder, preset, frames, clips, seed, batch=16):
    made = []
    for start in tqdm(range(0, clips, batch), desc=f"teacher samples of {frames} frames"):
        gen = torch.Generator().manual_seed(seed + start)
        captions = one_sprite_captions(min(batch, clips - start), seed + start)
        made.append(train.teacher_sample(teacher, text_encoder, captions, frames, preset.ode_steps,
                                         preset.timestep_shift, preset.guidance_scale, gen)[0])
    return torch.cat(made)


class WorldsInTurn:
    """--train's data: a generator seeded by the step's seed picks one of the worlds (the same world on a resume;
    the seed itself modulo 8 would give the clip steps, every other step, only half of the eight)."""

    def __init__(self, worlds):
        self.worlds = worlds

    def sample(self, batch, frames, seed):
        pick = int(torch.randint(len(self.worlds), (1,), generator=torch.Generator().manual_seed(seed)))
        return self.worlds[pick].sample(batch, frames, seed=seed)


def train_teacher(folder, frames, steps, batch):
    """Stage 0 of `tiny` (images every other step, the sprite weight, EMA), `steps` steps of `batch` clips of
    `frames` frames from the preset's world and the phase's family; releases FOLDER/teacher.pt."""
    spec = (f"tiny clip_frames={frames} rollout_frames={max(frames, train.TINY.rollout_frames)} "
            f"teacher_steps={steps} teacher_batch={batch}")
    run = train.Run("cpu", folder, 0, spec)
    try:
        done = os.path.exists(run.path("teacher.pt"))
        if done and run.load("teacher.pt").get("made_by") != run.made_by:      # run.load's own errors pass through
            raise SystemExit(f"{run.path('teacher.pt')} was not made by --train {steps} --batch {batch} --frames "
                             f"{frames}: give --train a folder of its own, or that run's values to go on with it")
        if not done:
            stage = train.Teacher(run)
            size = stage.model.cfg.frame_size
            stage.world = WorldsInTurn([World(size, **w) for w in (run.preset.world, *run.preset.memory_worlds)])
            train.run_stage(stage, run)
    finally:
        train.release_folder(folder)


def fine_tune(teacher, text_encoder, preset, worlds, frames, steps, lr, warmup=50, batch=2):
    """Stage 0's loss (flow matching, sprite pixels weighted) on `frames`-frame clips, a world of `worlds` in
    turn; returns the EMA copy."""
    model = teacher.train().requires_grad_(True)
    text_encoder = text_encoder.train().requires_grad_(True)
    parameters = [*model.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema, ema_text = train.EMA(model, preset.ema_decay), train.EMA(text_encoder, preset.ema_decay)
    forward = torch.compile(model, dynamic=False)
    run = types.SimpleNamespace(average_gradients=lambda parameters: None,   # train.optimizer_step's run, one process
                                autocast=contextlib.nullcontext)
    bar = tqdm(range(steps), desc=f"fine-tune on {frames}-frame clips")
    for step in bar:
        clips = worlds[step % len(worlds)].sample(batch, frames, seed=10_000_000 + step)
        gen = torch.Generator().manual_seed(20_000_000 + step)
        dropped = torch.rand(batch, generator=gen) < preset.text_dropout
        captions = ["" if drop else c[0] for c, drop in zip(clips.captions, dropped)]
        noise, sigma = torch.randn(clips.video.shape, generator=gen), torch.rand(batch, generator=gen)
        squared_error = train.flow_matching_error(forward, clips.video, noise, sigma, text_encoder(captions),
                                                  run.autocast)
        loss = ((1 + preset.sprite_weight * sprite_mask(clips.video, clips.background)) * squared_error).mean()
        train.optimizer_step(run, optimizer, parameters, train.learning_rate(step, steps, lr, warmup), loss)
        ema.update(model)
        ema_text.update(text_encoder)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema.module.eval(), ema_text.module.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("run", nargs="?", default="checkpoints", help="a run's folder: teacher.pt (default checkpoints)")
    parser.add_argument("--frames", type=int, default=24, help="clip length of the samples and the fine-tune")
    parser.add_argument("--steps", type=int, default=0, help="fine-tuning steps (0: measure the teacher only)")
    parser.add_argument("--lr", type=float, default=2e-4, help="the fine-tune's peak learning rate")
    parser.add_argument("--clips", type=int, default=128, help="one-sprite clips sampled from each teacher")
    parser.add_argument("--absence", type=int, default=7, help="frames out of sight that count as leaving")
    parser.add_argument("--train", type=int, default=0, metavar="STEPS",
                        help="first train a teacher from scratch in RUN: STEPS steps on --frames-frame clips of "
                             "the preset's world and the phase's family")
    parser.add_argument("--batch", type=int, default=2, help="clips per --train step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if min(args.frames, args.clips, args.absence, args.batch) < 1 or min(args.steps, args.train) < 0:
        parser.error("--frames, --clips, --absence and --batch must be at least 1, --steps and --train at least 0")
    torch.set_num_threads(args.threads)
    if args.train and args.frames % train.TINY.model["chunk_frames"]:
        parser.error(f"--frames {args.frames} with --train: whole chunks of {train.TINY.model['chunk_frames']} frames")
    if args.train:
        train_teacher(args.run, args.frames, args.train, args.batch)
    try:
        checkpoint = tv.load_checkpoint(os.path.join(args.run, "teacher.pt"))
    except tv.CheckpointError as error:
        raise SystemExit(str(error)) from None
    preset = train.preset_from(checkpoint["made_by"]["preset"])
    teacher, text_encoder = tv.build(checkpoint)
    size = teacher.cfg.frame_size
    worlds = [World(size, **w) for w in (preset.world, *preset.memory_worlds)]
    truth = [w.sample(args.clips, args.frames, seed=777 + i) for i, w in enumerate(worlds)]
    one_sprite = torch.cat([clips.video[clips.count == 1] for clips in truth])
    started = time.time()
    rows = [summary(f"ground truth, the {len(worlds)} worlds in turn", one_sprite, args.absence)]
    print(rows[-1], flush=True)
    rows.append(summary(f"teacher of {args.run} ({preset.clip_frames}-frame clips)",
                        samples(teacher, text_encoder, preset, args.frames, args.clips, 1), args.absence))
    print(rows[-1], flush=True)
    long_path = os.path.join(args.run, "teacher_long.pt")
    if args.steps:
        long_teacher, long_text = fine_tune(teacher, text_encoder, preset, worlds, args.frames, args.steps, args.lr)
        train.save_checkpoint(long_path, {"model": long_teacher.state_dict(), "text_encoder": long_text.state_dict(),
                                          "fine_tune": f"{args.steps} steps (lr {args.lr:g}) on {args.frames}-frame clips"})
    if os.path.exists(long_path):                        # made now, or by an earlier run of this script
        weights = torch.load(long_path, weights_only=True)
        long_teacher, long_text = tv.build(checkpoint)
        long_teacher.load_state_dict(weights["model"])
        long_text.load_state_dict(weights["text_encoder"])
        rows.append(summary(f"the same, fine-tuned {weights.get('fine_tune', '')} ({long_path})",
                            samples(long_teacher, long_text, preset, args.frames, args.clips, 1), args.absence))
    print(f"\n{args.frames}-frame one-sprite clips; out of sight >= {args.absence} frames, then seen again: an exit "
          f"(at the view's edge or a curtain) or a blink ({(time.time() - started) / 60:.1f} min)\n")
    print("| clips | made | with an exit | with a blink | identity kept (second half) | colour kept after the exit "
          "[95% interval] | the same colours paired at random |\n|---|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
