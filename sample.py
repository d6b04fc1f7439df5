"""
Stream a long video from the trained student, chunk by chunk, with optional prompt switches.

    python sample.py                                       a minute of "a circle on blue" -> out/video.mp4
    python sample.py --prompt "two squares on red" --switch 240:"two squares on green" --out out/switch.mp4
    python sample.py --mode sink                           the same without the global memory (LongLive)
    python sample.py --benchmark                           the five memory modes side by side, with intervals

Frames are written to an MP4 as they are made (imageio's ffmpeg plugin), so memory stays flat
however long the video: the model keeps only its sink, its window and the memory state M
(tiny_videossm.StreamCache). A GIF is convenient for short clips but is assembled in memory.
Ctrl-C or SIGTERM keeps the frames made so far as a playable video (EPILOG, stop_signals).
"""

import argparse
import contextlib
import math
import os
import signal
import sys
import time

import imageio
import numpy as np
import torch
from tqdm import tqdm

import tiny_videossm as tv
import train

DEFAULT_PROMPT = "a circle on blue"


def parse_switch(text, fps):
    """'FRAME:PROMPT' or 'SECONDSs:PROMPT' -> (frame, prompt)."""
    where, sep, prompt = text.partition(":")
    try:
        if not sep or not prompt.strip():
            raise ValueError
        frame = round(float(where[:-1]) * fps) if where.endswith("s") else int(where)
    except (ValueError, OverflowError):                # OverflowError: "infs"
        raise SystemExit(f"--switch {text!r}: expected FRAME:PROMPT or SECONDSs:PROMPT, "
                         f'e.g. --switch 120:"a square on red" or --switch 15s:"a square on red"') from None
    return frame, prompt.strip()


def prompt_schedule(prompt, switches, frames, chunk_frames):
    """{chunk: prompt}. A switch takes effect at the first chunk that starts at or after its frame, so
    it needs a chunk that starts inside the video, and two switches cannot share one chunk."""
    schedule, switched_at = {0: prompt}, {}
    last = (frames - 1) // chunk_frames * chunk_frames                # the first frame of the last chunk
    for frame, new_prompt in sorted(switches, key=lambda switch: switch[0]):
        if not 0 < frame < frames:
            raise SystemExit(f"a switch at frame {frame} is outside the video (frames 1 to {frames - 1})")
        chunk = math.ceil(frame / chunk_frames)
        if chunk * chunk_frames >= frames:
            raise SystemExit(f"a switch at frame {frame} would take effect at the next chunk boundary, frame "
                             f"{chunk * chunk_frames}, after the video ends (chunks are {chunk_frames} frames): "
                             + (f"the last frame a switch can use is {last}" if last else
                                "the video is a single chunk; make it longer"))
        if chunk in schedule:
            raise SystemExit(f"the switches at frames {switched_at[chunk]} and {frame} both take effect at frame "
                             f"{chunk * chunk_frames} (the next chunk boundary; chunks are {chunk_frames} frames): "
                             f"keep one, or move one to another chunk")
        schedule[chunk], switched_at[chunk] = new_prompt, frame
    return schedule


def to_pixels(chunk, scale):
    """(B, F, C, H, W) in [-1, 1] -> list of (H*scale, W*scale, C) uint8 frames of the first clip."""
    frames = ((chunk[0].clamp(-1, 1) + 1) * 127.5).round().byte()                # (F, C, H, W)
    frames = frames.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    return list(frames.permute(0, 2, 3, 1).cpu().numpy())


def open_writer(path, fps):
    """A streaming GIF or MP4 writer on a temporary file next to `path` (renamed when complete)."""
    if not path.endswith((".gif", ".mp4")):
        raise SystemExit(f"--out {path}: use a .gif or .mp4 file name")
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp{os.path.splitext(path)[1]}")
    try:
        os.makedirs(folder, exist_ok=True)
        open(tmp, "wb").close()                        # fail now, not after minutes of sampling
        if path.endswith(".gif"):   # GIF frames are kept until close; MP4 streams to disk
            writer = imageio.get_writer(tmp, mode="I", duration=1000 / fps, loop=0)
        else:
            writer = imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1)
    except OSError as error:
        raise SystemExit(f"cannot write {path}: {error.strerror or error}") from None
    return writer, tmp


def stream(model, text_encoder, schedule, frames, steps, shift, seed, mode, device, cache=None):
    """Yields chunks (1, chunk_frames, C, H, W) for `frames` frames (rounded up to whole chunks);
    pass a tv.StreamCache to watch it."""
    chunks = math.ceil(frames / model.cfg.chunk_frames)
    generator = torch.Generator().manual_seed(seed)
    sigmas = tv.denoising_sigmas(steps, shift)
    yield from tv.generate(model.to(device), text_encoder.to(device), schedule, chunks, sigmas, generator, mode,
                           cache=cache)


def load(path):
    checkpoint = train.load_checkpoint(path)
    if "config" not in checkpoint:               # what train.py saves while a stage runs, to resume it
        raise SystemExit(f"{path} is a training resume file, not a released checkpoint: pass a released one "
                         f"(checkpoints/student.pt), or finish training (run the same train.py command "
                         f"again) to write it")
    model, text_encoder = train.build(checkpoint)
    if not model.cfg.causal:
        raise SystemExit(f"{path} holds the bidirectional teacher; sample.py streams a causal student "
                         f"(checkpoints/student.pt)")
    try:
        preset = train.preset_from(checkpoint["preset"])
    except ValueError:                          # a preset this copy of train.py does not know
        preset = train.Preset()
    return model, text_encoder, preset


def check_prompt(flag, prompt):
    """Only captions of the world's grammar mean anything to the model (train.parse_caption)."""
    if not prompt.strip():
        raise SystemExit(f'{flag}: an empty prompt asks for nothing in particular; name what to show, '
                         f'e.g. {flag} "{DEFAULT_PROMPT}"')
    try:
        train.parse_caption(prompt.lower())         # the text encoder lowercases too
    except ValueError as error:
        raise SystemExit(f"{flag}: {error}") from None


def schedule_from_args(args, frames, chunk_frames):
    if frames < 1:
        raise SystemExit("the video needs at least one frame (--frames or --seconds)")
    check_prompt("--prompt", args.prompt)
    switches = [parse_switch(text, args.fps) for text in args.switch]
    for text, (_, prompt) in zip(args.switch, switches):
        check_prompt(f"--switch {text!r}", prompt)
    return prompt_schedule(args.prompt, switches, frames, chunk_frames)


@contextlib.contextmanager
def stop_signals():
    """Within the block, Ctrl-C (SIGINT) and SIGTERM only note their number in the list it yields, and
    the caller stops between chunks: raised inside imageio's writer, an exception would kill ffmpeg
    before it finishes the MP4 and leave an unplayable file."""
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def make_video(args, model, text_encoder, preset):
    cfg = model.cfg
    frames = round(args.seconds * args.fps) if args.frames is None else args.frames
    schedule = schedule_from_args(args, frames, cfg.chunk_frames)
    writer, tmp = open_writer(args.out, args.fps)
    started, written = time.time(), 0
    try:
        with stop_signals() as caught, tqdm(total=frames, unit="frame", desc=f"{args.mode} memory") as bar:
            for chunk in stream(model, text_encoder, schedule, frames, args.steps, preset.shift, args.seed,
                                args.mode, args.device):
                for frame in to_pixels(chunk, args.scale)[: frames - written]:
                    writer.append_data(frame)
                    written += 1
                bar.update(min(cfg.chunk_frames, frames - bar.n))
                if caught:                             # every chunk writes a frame: `written` is at least 1
                    break
        writer.close()
        os.replace(tmp, args.out)
    except BaseException:                              # nothing half-written is left behind
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if caught:
        print(f"stopped by {signal.Signals(caught[0]).name}: kept the first {written} frames in {args.out} "
              f"(exit status {128 + caught[0]})", file=sys.stderr)
        raise SystemExit(128 + caught[0])
    seconds = time.time() - started
    print(f"wrote {args.out}: {frames} frames ({frames / args.fps:.1f} s at {args.fps} fps), "
          f"{cfg.frame_size * args.scale}x{cfg.frame_size * args.scale} pixels, made in {seconds:.1f} s "
          f"({frames / seconds:.1f} frames/s, {'faster' if frames / seconds >= args.fps else 'slower'} than real time)")
    for chunk, prompt in sorted(schedule.items()):
        print(f"  from frame {chunk * cfg.chunk_frames}: {prompt!r}")


# ---- the benchmark: the five memory modes side by side -------------------------------------------


def cache_bytes(cache):
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


def recall_clips(world, cfg, count, frames, seed):
    """Ground-truth clips for the recall probe: one sprite, out of sight in the sink's chunks (so the
    sink cannot show it), then seen, then hidden for so long that the window holds none of it, and
    seen again. Returns (clips, context chunks, frame of return) for up to `count` of them."""
    cf, window = cfg.chunk_frames, cfg.window_chunks
    sink_frames = cfg.sink_chunks * cf
    found = []
    for batch in range(64):                                   # a search: the clips are rare, not scarce
        clips = world.sample(32, frames, seed=seed + 1000 * batch)
        for b in torch.nonzero(clips.count == 1).flatten().tolist():
            area = clips.visible_area[b, :, 0].tolist()
            seen = [a >= 8 for a in area]                     # clearly: train.read_attributes needs 4 pixels
            if any(a >= 1 for a in area[:sink_frames]) or True not in seen:
                continue
            first = seen.index(True)
            hidden = [a < 1 for a in area]                    # not one pixel in sight
            hidden_at = hidden.index(True, first) if True in hidden[first:] else frames
            back_at = hidden.index(False, hidden_at) if False in hidden[hidden_at:] else frames
            returns = seen.index(True, back_at) if True in seen[back_at:] else frames
            context = math.ceil(hidden_at / cf) + window      # the first chunk after the window emptied
            if context * cf <= back_at and returns <= frames - 4 * cf:   # then four chunks to come back in
                found.append((clips.video[b:b + 1], clips.captions[b][0], int(clips.sprite_colour[b, 0]),
                              context, returns))
            if len(found) == count:
                return found
    return found


@torch.no_grad()
def recall(model, text_encoder, clip, prompt, colour, context, returns, mode, sigmas, seed):
    """1 if, after ground-truth context up to chunk `context`, the sprite the model brings back (in
    the chunks until four after its true return) has its ground-truth colour, else 0."""
    cf = model.cfg.chunk_frames
    cache = tv.StreamCache(model, 1, mode)
    cache.set_prompt(model, text_encoder([prompt]))
    tv.teacher_force(model, cache, clip[:, :context * cf])
    made = math.ceil(returns / cf) + 4 - context
    video = torch.cat(list(tv.generate(model, text_encoder, {0: prompt}, made, sigmas,
                                       torch.Generator().manual_seed(seed), cache=cache)), 1)
    _, sprite = train.read_attributes(video)                  # (1, frames made)
    shown = sprite[sprite >= 0]
    return float(len(shown) > 0 and shown.mode().values.item() == colour)


@torch.no_grad()
def benchmark(args, model, text_encoder, preset):
    """Every mode of `--modes` streams the same prompts (one sprite each) and seeds for `--frames`
    frames (default 20 teacher clips): the world's measures per video, frames/s and the cache's peak
    size, ground truth on top; then the recall probe; then hybrid minus each other mode with paired
    intervals."""
    model, text_encoder, cfg = model.to(args.device), text_encoder.to(args.device), model.cfg
    frames = 20 * preset.clip_frames if args.frames is None else args.frames
    if frames < 2 * cfg.chunk_frames:
        raise SystemExit(f"--benchmark compares whole chunks: --frames must be at least two chunks "
                         f"({2 * cfg.chunk_frames} frames)")
    frames -= frames % cfg.chunk_frames
    sigmas = tv.denoising_sigmas(args.steps, preset.shift)
    world = train.World(cfg.frame_size, **preset.world)
    truth = world.sample(4 * args.videos, frames, seed=args.seed)
    keep = torch.nonzero(truth.count == 1).flatten()[:args.videos]        # one sprite: identity is defined
    video_of = {"ground truth": truth.video[keep]}
    prompts, shapes = [truth.captions[b][0] for b in keep], truth.shape[keep]
    recall_world = train.recall_world(preset, cfg)
    probes = recall_clips(recall_world, cfg, args.videos, frames, args.seed)
    speed, peak, recalled = {}, {}, {}
    batches = [list(range(len(prompts)))[i:i + 16] for i in range(0, len(prompts), 16)]   # 16 videos at once
    with tqdm(total=len(args.modes) * (len(batches) + 1 + len(probes)), desc="benchmark", unit="step") as bar:
        for mode in args.modes:
            bar.set_description(f"benchmark: {mode}")
            videos = []
            for n, batch in enumerate(batches):
                videos.append(torch.cat(list(tv.generate(model, text_encoder, {0: [prompts[i] for i in batch]},
                                                         frames // cfg.chunk_frames, sigmas,
                                                         torch.Generator().manual_seed(args.seed + n), mode,
                                                         batch_size=len(batch))), 1).cpu())
                bar.update()
            video_of[mode] = torch.cat(videos)
            cache, started, peak[mode] = tv.StreamCache(model, 1, mode, device=args.device), time.time(), 0
            for _ in tv.generate(model, text_encoder, {0: prompts[0]}, frames // cfg.chunk_frames, sigmas,
                                 torch.Generator().manual_seed(args.seed), cache=cache):   # one stream, timed
                peak[mode] = max(peak[mode], cache_bytes(cache))
            speed[mode] = frames / (time.time() - started)
            bar.update()
            recalled[mode] = torch.zeros(len(probes))
            for i, probe in enumerate(probes):
                recalled[mode][i] = recall(model, text_encoder, *probe, mode, sigmas, args.seed + i)
                bar.update()
    per_video = {}                                                          # measure -> mode -> (N,)
    for name, video in video_of.items():
        clips = [v[None] for v in video]                                    # each video on its own
        scores = {"fidelity": map(train.fidelity, clips), "sprite presence": map(train.sprite_presence, clips),
                  "shape match": map(train.shape_match, clips, shapes[:, None]),
                  "identity kept": train.identity_kept(video).tolist(),
                  "subject consistency": map(train.subject_consistency, clips),
                  "background consistency": map(train.background_consistency, clips),
                  "dynamic degree": map(train.dynamic_degree, clips), "flicker": map(train.flicker, clips)}
        for measure, values in scores.items():
            per_video.setdefault(measure, {})[name] = torch.tensor(list(values))
    per_video["recall"] = {"ground truth": torch.ones(len(probes)), **recalled}
    print(f"\n{len(prompts)} videos of {frames} frames ({frames // preset.clip_frames} teacher clips), one sprite "
          f"each, {args.steps} steps, the same prompts and seeds in every row. Recall: {len(probes)} ground-truth "
          f"clips{' with curtains (world.occluder=4)' if not world.occluder else ''} fed as context until "
          f"the sprite has been out of sight longer than sink + window hold; chance {1 / len(train.SPRITE_COLOURS):.2f}\n")
    print("| | " + " | ".join(per_video) + " | frames/s, one stream | peak cache |\n|---|"
          + "--:|" * (len(per_video) + 2))
    for name in video_of:
        print(f"| {name} | " + " | ".join(f"{values[name].nanmean():.3f}" for values in per_video.values())
              + (f" | {speed[name]:.1f} | {peak[name] / 2 ** 20:.2f} MB |" if name in speed else " | | |"))
    others = [mode for mode in args.modes if mode != "hybrid"]
    if not others:
        return
    print(f"\nhybrid minus each mode: the mean difference [paired bootstrap 95% interval]; ** where the interval "
          f"excludes 0\n\n| | " + " | ".join(f"hybrid - {m}" for m in others) + " |\n|---|" + "--:|" * len(others))
    for measure, values in per_video.items():
        cells = [paired_interval(values["hybrid"], values[m]) for m in others]
        print(f"| {measure} | " + " | ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{' **' if lo > 0 or hi < 0 else ''}"
                                            for d, lo, hi in cells) + " |")


def peak_memory_mb():
    """The process's peak resident memory so far, in MB (Linux and macOS; None elsewhere)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss            # KB on Linux, bytes on macOS
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


@torch.no_grad()
def memory_trace(args, model, text_encoder, preset):
    """Stream --frames frames (default 10,000) in --mode without keeping them, and print, ten times
    along the way, the cache's size and the process's peak memory: both flat unless --mode full."""
    frames = 10_000 if args.frames is None else args.frames
    schedule = schedule_from_args(args, frames, model.cfg.chunk_frames)
    cache = tv.StreamCache(model, 1, args.mode, device=args.device)   # where stream() puts the model
    print(f"{args.mode} memory, {frames} frames of {args.prompt!r}\n")
    print("| frames | cache | peak process memory | frames/s |\n|--:|--:|--:|--:|")
    every, made, started = max(1, frames // 10), 0, time.time()
    with tqdm(total=frames, unit="frame", desc=f"{args.mode} memory", leave=False) as bar:
        for chunk in stream(model, text_encoder, schedule, frames, args.steps, preset.shift, args.seed, args.mode,
                            args.device, cache):
            made += chunk.shape[1]
            bar.update(chunk.shape[1])
            if made // every > (made - chunk.shape[1]) // every or made >= frames:
                peak = peak_memory_mb()
                tqdm.write(f"| {made} | {cache_bytes(cache) / 2 ** 20:.2f} MB | "
                           f"{f'{peak:.0f} MB' if peak else 'n/a'} | {made / (time.time() - started):.1f} |")


EPILOG = f"""prompts (--prompt, --switch) follow the grammar the model was trained on:
  {train.GRAMMAR}
  shape: {', '.join(train.SHAPES)}; background: {', '.join(train.BACKGROUND_NAMES)}
the vocabulary, every word a prompt may use:
  {' '.join(train.VOCAB)}

Ctrl-C or SIGTERM stops after the chunk being made and keeps the frames so far
as a playable video at --out; the exit status is then 130 after Ctrl-C, 143
after SIGTERM (128 + the signal's number, as shells report it)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help, unless None (its help says what happens); the epilog as written."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Stream a long video from the trained VideoSSM student.",
                                     epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--prompt", help=f"what to show (default: '{DEFAULT_PROMPT}'); the grammar is below")
    parser.add_argument("--switch", action="append", metavar="FRAME:PROMPT",
                        help="switch the prompt at a frame (or at SECONDSs), repeatable; takes effect at "
                             "the next chunk boundary")
    parser.add_argument("--frames", type=int, help="length in frames (overrides --seconds)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length in seconds of output")
    parser.add_argument("--fps", type=int, default=8, help="frames per second of the output file")
    parser.add_argument("--seed", type=int, default=0, help="noise seed: the same seed gives the same video")
    parser.add_argument("--mode", choices=tv.MODES,
                        help="memory: hybrid (VideoSSM, the default), sink (LongLive), window (Self-Forcing), "
                             "full (quadratic), memory (state-space only: each chunk sees itself and M)")
    parser.add_argument("--steps", type=int,
                        help="denoising steps per chunk (default: the checkpoint's, the steps it was distilled for)")
    parser.add_argument("--out", default="out/video.mp4",
                        help="output file: .mp4 streams to disk; .gif keeps its frames in memory until the end")
    parser.add_argument("--scale", type=int, default=4, help="pixel upscaling of the output")
    parser.add_argument("--checkpoint", default="checkpoints/student.pt", help="student checkpoint")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 0: torch's default, all cores. A small model runs many small "
                             "operations, each shared out among the threads: when a thread waits for a core "
                             "that another process holds, every operation waits for it")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--benchmark", action="store_true",
                      help="print the five memory modes side by side on the world's own prompts (--frames "
                           "defaults to 20 teacher clips)")
    parser.add_argument("--videos", type=int, default=32, help="with --benchmark: videos per mode")
    parser.add_argument("--modes", help=f"with --benchmark: the modes to compare, comma-separated, hybrid among "
                                        f"them (default all: {','.join(tv.MODES)}; full takes most of the time)")
    runs.add_argument("--memory-trace", action="store_true",
                      help="stream --frames frames (default 10000) in --mode without writing them and print "
                           "the cache size and the peak process memory ten times along the way")
    args = parser.parse_args(argv)
    if args.benchmark:
        given = [flag for flag, value in [("--prompt", args.prompt), ("--mode", args.mode),
                                          ("--switch", args.switch)] if value is not None]
        if given:
            parser.error(f"--benchmark runs every mode on the world's own prompts; drop {'/'.join(given)}")
        args.modes = tv.MODES if args.modes is None else tuple(m.strip() for m in args.modes.split(","))
        unknown = [m for m in args.modes if m not in tv.MODES]
        if unknown or "hybrid" not in args.modes or len(set(args.modes)) != len(args.modes):
            parser.error(f"--modes {','.join(args.modes)}: name each of {', '.join(tv.MODES)} at most once, "
                         f"hybrid among them (the others are compared with it)")
    elif args.modes is not None:
        parser.error("--modes is for --benchmark; a video streams in one --mode")
    # The defaults, filled in only now so that --benchmark could tell which flags were given.
    args.prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt
    args.mode = args.mode or "hybrid"
    args.switch = args.switch or []
    for flag, value in [("--steps", args.steps), ("--fps", args.fps), ("--scale", args.scale),
                        ("--videos", args.videos)]:
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be at least 1")
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames {args.frames}: a video needs at least one frame")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        parser.error(f"--seconds {args.seconds}: give a positive length")
    if not 0 <= args.seed < 2 ** 63:
        parser.error(f"--seed {args.seed}: use a seed from 0 to 2**63 - 1")
    if args.threads < 0:
        parser.error(f"--threads {args.threads}: give a number of threads, or 0 for torch's default")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model, text_encoder, preset = load(args.checkpoint)
    if args.steps is None:
        args.steps = preset.denoising_steps
    run = benchmark if args.benchmark else memory_trace if args.memory_trace else make_video
    run(args, model, text_encoder, preset)


if __name__ == "__main__":
    main()
