"""
Stream a long video from the trained student, chunk by chunk, with optional prompt switches.

    python sample.py                                       a minute of "a circle on blue" -> out/video.mp4
    python sample.py --prompt "two squares on red" --switch 240:"two squares on green" --out out/switch.mp4
    python sample.py --mode sink                           the same without the global memory (LongLive)

Frames go to the file as they are made: an MP4 streams to disk through imageio's ffmpeg plugin,
so memory stays flat however long the video (the model keeps only its sink, its window and the
memory state M, tiny_videossm.StreamCache); a GIF's writer keeps its frames until the end.
How well the videos keep their sprites, and how the memory modes compare: measure/ (README).
"""

import argparse
import contextlib
import math
import os
import signal
import sys
import time

import imageio
import torch
from tqdm import tqdm

import tiny_videossm as tv
from world import BACKGROUND_NAMES, GRAMMAR, SHAPES, VOCAB, parse_caption

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
    """A writer on a temporary file next to `path`, renamed when complete."""
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


def stream(model, text_encoder, autoencoder, schedule, frames, steps, timestep_shift, seed, mode, cache=None):
    """Yields chunks (1, chunk_frames, C, H, W) of pixels for `frames` frames (rounded up to whole chunks), on
    the model's device, each decoded from its latents as it is finished; pass a tv.StreamCache to watch it."""
    chunks = math.ceil(frames / model.cfg.chunk_frames)
    generator = torch.Generator().manual_seed(seed)
    sigmas = tv.denoising_sigmas(steps, timestep_shift)
    for latents in tv.generate(model, text_encoder, schedule, chunks, sigmas, generator, mode, cache=cache):
        yield autoencoder.decode(latents)


def load(path):
    """A released student checkpoint -> (model, text encoder, autoencoder, the rest of the checkpoint: its
    sampling values, what made it), on the CPU."""
    try:
        checkpoint = tv.load_checkpoint(path)
        if "stage" not in checkpoint:                # what train.py saves while a stage runs, to resume it
            raise tv.CheckpointError(f"{path} is a training resume file, not a released checkpoint: pass a released "
                                     f"one (checkpoints/student.pt), or finish training (run the same train.py "
                                     f"command again) to write it")
        model, text_encoder, autoencoder = tv.build(checkpoint, path)
    except tv.CheckpointError as error:
        raise SystemExit(str(error)) from None
    if model is None or not model.cfg.causal:
        raise SystemExit(f"{path} holds the {'autoencoder' if model is None else 'bidirectional teacher'}; "
                         f"sample.py streams a causal student (checkpoints/student.pt)")
    weights = ("model", "text_encoder", "autoencoder")
    return model, text_encoder, autoencoder, {k: v for k, v in checkpoint.items() if k not in weights}


def check_prompt(flag, prompt):
    """Only captions of the world's grammar mean anything to the model (world.parse_caption)."""
    if not prompt.strip():
        raise SystemExit(f'{flag}: an empty prompt asks for nothing in particular; name what to show, '
                         f'e.g. {flag} "{DEFAULT_PROMPT}"')
    try:
        parse_caption(prompt.lower())         # the text encoder lowercases too
    except ValueError as error:
        raise SystemExit(f"{flag}: {error}") from None


def schedule_from_args(args, frames, chunk_frames):
    """--prompt and --switch (switches at SECONDSs count in --fps) -> {chunk: prompt}, or one clear error."""
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


def make_video(args, model, text_encoder, autoencoder, checkpoint):
    cfg = model.cfg
    frames = round(args.seconds * args.fps) if args.frames is None else args.frames
    schedule = schedule_from_args(args, frames, cfg.chunk_frames)
    writer, tmp = open_writer(args.out, args.fps)
    started, written = time.time(), 0
    try:
        with stop_signals() as caught, tqdm(total=frames, unit="frame", desc=f"{args.mode} memory") as bar:
            for chunk in stream(model, text_encoder, autoencoder, schedule, frames, args.steps,
                                checkpoint["sampling"]["timestep_shift"], args.seed, args.mode):
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
          f"{autoencoder.cfg.frame_size * args.scale}x{autoencoder.cfg.frame_size * args.scale} pixels, made in {seconds:.1f} s "
          f"({frames / seconds:.1f} frames/s, {'faster' if frames / seconds >= args.fps else 'slower'} than real time)")
    for chunk, prompt in sorted(schedule.items()):
        print(f"  from frame {chunk * cfg.chunk_frames}: {prompt!r}")


EPILOG = f"""prompts (--prompt, --switch) follow the grammar the model was trained on:
  {GRAMMAR}
  shape: {', '.join(SHAPES)}; background: {', '.join(BACKGROUND_NAMES)}
the vocabulary, every word a prompt may use:
  {' '.join(VOCAB)}

Ctrl-C or SIGTERM stops after the chunk being made and keeps the frames so far
as a playable video at --out; the exit status is then 130 after Ctrl-C, 143
after SIGTERM (128 + the signal's number, as shells report it)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help, unless None (its help says what happens); the epilog as written."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_student_arguments(parser):
    """The flags of every command that streams from a student checkpoint (sample.py, measure/)."""
    parser.add_argument("--seed", type=int, default=0, help="noise seed: the same seed gives the same video")
    parser.add_argument("--steps", type=int,
                        help="denoising steps per chunk (default: the checkpoint's, the steps it was distilled for)")
    parser.add_argument("--checkpoint", default="checkpoints/student.pt", help="student checkpoint")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 0: torch's default, all cores. A small model runs many small "
                             "operations, each shared out among the threads: when a thread waits for a core "
                             "that another process holds, every operation waits for it")


def load_student(parser, args):
    """Check add_student_arguments' flags, set torch's threads, load the checkpoint onto --device.
    Returns sample.load's four; args.steps defaults to the checkpoint's."""
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps {args.steps}: must be at least 1")
    if not 0 <= args.seed < 2 ** 63:
        parser.error(f"--seed {args.seed}: use a seed from 0 to 2**63 - 1")
    if args.threads < 0:
        parser.error(f"--threads {args.threads}: give a number of threads, or 0 for torch's default")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, text_encoder, autoencoder, checkpoint = load(args.checkpoint)
    args.steps = args.steps or checkpoint["sampling"]["denoising_steps"]
    return model.to(args.device), text_encoder.to(args.device), autoencoder.to(args.device), checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description="Stream a long video from the trained VideoSSM student.",
                                     epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="what to show; the grammar is below")
    parser.add_argument("--switch", action="append", default=[], metavar="FRAME:PROMPT",
                        help="switch the prompt at a frame (or at SECONDSs), repeatable; takes effect at "
                             "the next chunk boundary")
    parser.add_argument("--frames", type=int, help="length in frames (overrides --seconds)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length in seconds of output")
    parser.add_argument("--fps", type=int, default=8, help="frames per second of the output file")
    parser.add_argument("--mode", choices=tv.MODES, default="hybrid",
                        help="memory: hybrid (VideoSSM), sink (LongLive), window (Self-Forcing), "
                             "full (quadratic), memory (state-space only: each chunk sees itself and M)")
    parser.add_argument("--out", default="out/video.mp4",
                        help="output file: .mp4 streams to disk; .gif keeps its frames in memory until the end")
    parser.add_argument("--scale", type=int, default=4, help="pixel upscaling of the output")
    add_student_arguments(parser)
    args = parser.parse_args(argv)
    for flag, value in [("--fps", args.fps), ("--scale", args.scale)]:
        if value < 1:
            parser.error(f"{flag} {value}: must be at least 1")
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames {args.frames}: a video needs at least one frame")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        parser.error(f"--seconds {args.seconds}: give a positive length")
    with torch.no_grad():
        make_video(args, *load_student(parser, args))


if __name__ == "__main__":
    main()
