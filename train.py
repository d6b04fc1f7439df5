"""
Training for tiny-videossm, read top to bottom: the world (the only data), the presets, then the
stages, each as its data, its loss and its update: stage 0 the teacher, stage 1 causal ODE
distillation, stage 2 self-rollout DMD and its last phase, the memory's recall. The harness they
share (devices, checkpoints, the loop) and the command line come last. Imports tiny_videossm.py;
the measures of how well it all works live in measure/, which imports this file.

The world. Every clip is a coloured background with one or two sprites gliding across it, in an
arena larger than the camera's view (World.arena_scale): they bounce off its walls, leave the picture
and come back. The caption names the background colour, the sprite shape and how many sprites there
are ("two circles on blue"), NOT the sprites' colours: those are drawn once per clip and never change,
so a model that paints a returning sprite in its old colour has remembered it, the long-range memory
VideoSSM is about. All closed form and vectorised: a clip of any length costs a few tensor ops.

    World(size=32).sample(batch_size, frames, seed, switch_at=None) -> Clips (video + truth)
    parse_caption(text) -> Caption      random_caption(generator) -> str      VOCAB
    sprite_mask(frames, background) -> where frames show a sprite (the teacher's loss weights it)

Glossary of the shape comments (frames are float32 RGB in [-1, 1], laid out (B, F, 3, H, W)):
    B   clips in the batch     F   frames      S   sprite slots (MAX_SPRITES)     H, W   height, width
    C   colour channels (3)    n   chunks
"""

import argparse
import copy
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import torch
import torch.distributed as dist
from tqdm import tqdm

import tiny_videossm as tv

# ---- the world --------------------------------------------------------------------------------

# Named by the caption. Muted, darkish tones so that the sprites stand out. RGB in [0, 1].
BACKGROUNDS = {"red": (0.45, 0.12, 0.12), "green": (0.12, 0.38, 0.16),
               "blue": (0.12, 0.16, 0.45), "purple": (0.33, 0.13, 0.40)}
SHAPES = ["square", "circle", "diamond"]
# Not named by the caption: each sprite draws one and keeps it for the whole clip (its identity).
SPRITE_COLOURS = {"white": (1.0, 1.0, 1.0), "yellow": (1.0, 0.85, 0.1),
                  "cyan": (0.1, 0.85, 1.0), "orange": (1.0, 0.5, 0.05)}
MAX_SPRITES = 2  # a clip has 1 or 2 sprites, as its caption says
OCCLUDER_RGB = torch.tensor([0.55, 0.55, 0.55]) * 2 - 1  # the grey curtains sprites pass behind (World.occluder)

BACKGROUND_NAMES = list(BACKGROUNDS)
BACKGROUND_RGB = torch.tensor(list(BACKGROUNDS.values())) * 2 - 1  # (4, 3) in [-1, 1]
SPRITE_RGB = torch.tensor(list(SPRITE_COLOURS.values())) * 2 - 1  # (4, 3) in [-1, 1]

VOCAB = sorted(["a", "two", "on", *SHAPES, *(shape + "s" for shape in SHAPES), *BACKGROUNDS])
GRAMMAR = "'a {shape} on {background}' or 'two {shape}s on {background}'"


class Caption(NamedTuple):
    """What a caption names: "two circles on blue" is Caption(count=2, shape=1, background=2)."""
    count: int       # 1 or 2 sprites
    shape: int       # index into SHAPES
    background: int  # index into BACKGROUNDS

    def text(self) -> str:
        shape = SHAPES[self.shape]
        sprites = f"a {shape}" if self.count == 1 else f"two {shape}s"
        return f"{sprites} on {BACKGROUND_NAMES[self.background]}"


def parse_caption(text: str) -> Caption:
    """Read a caption of the grammar GRAMMAR; a clear ValueError for anything else."""
    words = text.split()
    for word in words:
        if word not in VOCAB:
            raise ValueError(f"unknown word {word!r} in caption {text!r}; the vocabulary is {VOCAB}")
    if len(words) == 4 and words[0] in ("a", "two") and words[2] == "on":
        count = 1 if words[0] == "a" else 2
        shapes = SHAPES if count == 1 else [shape + "s" for shape in SHAPES]
        if words[1] in shapes and words[3] in BACKGROUND_NAMES:
            return Caption(count, shapes.index(words[1]), BACKGROUND_NAMES.index(words[3]))
    raise ValueError(f"caption {text!r} does not follow the grammar {GRAMMAR}")


def random_caption(generator: torch.Generator) -> str:
    """A caption drawn uniformly from the grammar, e.g. for prompts at training time."""
    count, shape, background = (int(torch.randint(n, (1,), generator=generator))
                                for n in (MAX_SPRITES, len(SHAPES), len(BACKGROUNDS)))
    return Caption(count + 1, shape, background).text()


@dataclass
class Clips:
    """A batch of clips with their ground truth, frame by frame."""
    video: torch.Tensor          # (B, F, 3, H, W) RGB in [-1, 1]
    captions: list[list[str]]    # captions[b][f]: the caption in force at frame f of clip b
    background: torch.Tensor     # (B, F) index into BACKGROUNDS (named)
    shape: torch.Tensor          # (B, F) index into SHAPES (named)
    count: torch.Tensor          # (B,) number of sprites, 1 or 2 (named)
    sprite_colour: torch.Tensor  # (B, S) index into SPRITE_COLOURS, -1 for an absent sprite (not named)
    position: torch.Tensor       # (B, F, S, 2) sprite centres (x, y) in view pixels; the view is [0, size)
    visible_area: torch.Tensor   # (B, F, S) pixels of each sprite in view, after occlusion


@dataclass
class World:
    """The procedural world: `World(size=32).sample(batch_size, frames, seed)` gives Clips."""
    size: int = 32            # frames are size x size pixels
    arena_scale: float = 1.5  # the arena's side in view sides; the view sits in its centre
    min_speed: float = 0.6    # sprite speed in pixels per frame, drawn uniformly in [min, max]
    max_speed: float = 1.5
    occluder: int = 0         # width in pixels of the grey curtains at the view's left and right edges (0: none)

    def __post_init__(self):
        if not (0 <= 2 * self.occluder < self.size and 0 < self.min_speed <= self.max_speed and self.arena_scale >= 1):
            raise ValueError(f"World needs 0 <= occluder < size / 2 ({self.size / 2:g}), 0 < min_speed <= max_speed and "
                             f"arena_scale >= 1; got {self.occluder}, {self.min_speed}, {self.max_speed}, "
                             f"{self.arena_scale}")

    @property
    def sprite_half_size(self) -> float:
        return self.size / 8  # sprites are about a quarter of the view wide

    @property
    def centre_range(self) -> tuple[float, float]:
        """Where a sprite's centre can be on either axis, in view pixels: the walls it bounces off."""
        margin = (self.arena_scale - 1) * self.size / 2
        return -margin + self.sprite_half_size, self.size + margin - self.sprite_half_size

    def sample(self, batch_size: int, frames: int, seed: int, switch_at=None) -> Clips:
        """Draw `batch_size` clips of `frames` frames; the same seed gives bit-identical clips.

        switch_at: a frame index k (0 < k < frames), or one per clip (a list), at which each clip's
        caption changes to a different shape and/or background; the count, the sprite colours and
        the motion go on.
        """
        if batch_size < 1 or frames < 1:
            raise ValueError(f"need at least one clip and one frame, got {batch_size} and {frames}")
        at = None if switch_at is None else torch.tensor(switch_at).expand(batch_size)  # (B,)
        if at is not None and not (0 < at).all() & (at < frames).all():
            raise ValueError(f"switch_at={switch_at} is not a frame inside the clip (0 < k < {frames})")
        generator = torch.Generator().manual_seed(seed)
        B, S = batch_size, MAX_SPRITES
        count = torch.randint(1, S + 1, (B,), generator=generator)  # (B,)
        shape = torch.randint(len(SHAPES), (B,), generator=generator)  # (B,)
        background = torch.randint(len(BACKGROUNDS), (B,), generator=generator)  # (B,)
        # Each sprite its own colour: the first S of a random permutation of the palette.
        colour = torch.rand(B, len(SPRITE_COLOURS), generator=generator).argsort(1)[:, :S]  # (B, S)
        # Drawn with or without a switch, so that switch_at changes nothing before frame k.
        pairs = len(SHAPES) * len(BACKGROUNDS)  # (shape, background) combinations
        caption_step = torch.randint(1, pairs, (B,), generator=generator)  # (B,)
        lo, hi = self.centre_range
        start = lo + (hi - lo) * torch.rand(B, S, 2, generator=generator)  # (B, S, 2)
        angle = 2 * math.pi * torch.rand(B, S, generator=generator)  # (B, S)
        speed = torch.empty(B, S).uniform_(self.min_speed, self.max_speed, generator=generator)  # (B, S)
        velocity = speed[..., None] * torch.stack([angle.cos(), angle.sin()], -1)  # (B, S, 2)

        # Elastic bounces in closed form: move freely through mirrored copies of the arena, then
        # fold back with a triangle wave of period 2 * span.
        t = torch.arange(frames, dtype=torch.float32)[None, :, None, None]  # (1, F, 1, 1)
        unfolded = start[:, None] + velocity[:, None] * t - lo  # (B, F, S, 2)
        span = hi - lo
        position = lo + span - (unfolded.remainder(2 * span) - span).abs()  # (B, F, S, 2)

        # The named attributes per frame. A switch steps to another (shape, background) pair.
        shape_per_frame = shape[:, None].repeat(1, frames)  # (B, F)
        background_per_frame = background[:, None].repeat(1, frames)  # (B, F)
        if at is not None:
            # a step of 1 .. pairs-1 around all pairs never lands on the same pair
            pair = (shape * len(BACKGROUNDS) + background + caption_step) % pairs  # (B,)
            after = torch.arange(frames) >= at[:, None]  # (B, F)
            shape_per_frame = torch.where(after, (pair // len(BACKGROUNDS))[:, None], shape_per_frame)
            background_per_frame = torch.where(after, (pair % len(BACKGROUNDS))[:, None], background_per_frame)

        present = torch.arange(S) < count[:, None]  # (B, S)
        video, visible_area = self.render(background_per_frame, shape_per_frame, colour, present, position)

        # Two strings per clip at most, repeated: long clips stay cheap.
        text = lambda b, f: Caption(int(count[b]), int(shape_per_frame[b, f]), int(background_per_frame[b, f])).text()
        before = [frames] * B if at is None else at.tolist()
        captions = [[text(b, 0)] * before[b] + [text(b, frames - 1)] * (frames - before[b]) for b in range(B)]
        return Clips(video, captions, background_per_frame, shape_per_frame, count,
                     torch.where(present, colour, -1), position, visible_area)

    def render(self, background, shape, colour, present, position):
        """Paint the frames.

        Args:
            background, shape: shape (B, F), indices into BACKGROUNDS and SHAPES
            colour: shape (B, S), indices into SPRITE_COLOURS; present: shape (B, S), bool
            position: shape (B, F, S, 2), sprite centres in view pixels
        Returns the video (B, F, 3, H, W) and each sprite's visible area in pixels (B, F, S).
        """
        pixel = torch.arange(self.size, dtype=torch.float32) + 0.5  # pixel centres
        dx = (pixel - position[..., 0, None, None]).abs()  # (B, F, S, 1, W)
        dy = (pixel[:, None] - position[..., 1, None, None]).abs()  # (B, F, S, H, 1)
        r = self.sprite_half_size
        distance = torch.stack([  # signed distance to the edge in pixels, negative inside
            torch.maximum(dx, dy) - r,                  # square
            (dx ** 2 + dy ** 2).sqrt() - r,             # circle
            (dx + dy - 1.4 * r) / math.sqrt(2),         # diamond, tips out at 1.4 r: about the square's area
        ])  # (3, B, F, S, H, W)
        which = shape[None, :, :, None, None, None].expand(1, *distance.shape[1:])  # (1, B, F, S, H, W)
        distance = distance.gather(0, which)[0]  # (B, F, S, H, W)
        # A 1-pixel soft edge: coverage goes from 1 to 0 as the distance goes from -0.5 to 0.5.
        alpha = (0.5 - distance).clamp(0, 1) * present[:, None, :, None, None]  # (B, F, S, H, W)

        video = BACKGROUND_RGB[background][..., None, None].expand(-1, -1, -1, self.size, self.size)
        sprite_rgb = SPRITE_RGB[colour][:, None, :, :, None, None]  # (B, 1, S, 3, 1, 1)
        coverage = []  # each sprite's share of each pixel, after what was painted over it
        for s in range(MAX_SPRITES):
            a = alpha[:, :, s, None]  # (B, F, 1, H, W)
            video = video * (1 - a) + sprite_rgb[:, :, s] * a  # (B, F, 3, H, W)
            coverage = [c * (1 - a) for c in coverage] + [a]
        column = torch.arange(self.size)  # the curtains, painted last (in front): 1 on the columns they cover
        band = ((column < self.occluder) | (column >= self.size - self.occluder)).float()  # (W,)
        video = video * (1 - band) + OCCLUDER_RGB[:, None, None] * band  # (B, F, 3, H, W)
        visible_area = (torch.cat(coverage, 2) * (1 - band)).sum((-2, -1))  # (B, F, S)
        return video, visible_area


def sprite_mask(frames: torch.Tensor, background) -> torch.Tensor:
    """Where frames show a sprite: 1.0 where a pixel is more than 0.5 from the background colour
    (`background` an index into BACKGROUNDS, or one per frame, (B, F)) and from the curtains' grey, else
    0.0; shape (B, F, 1, H, W). On clean frames: a sprite, or most of one on its soft edge."""
    away = lambda rgb: (frames - rgb.to(frames.device)[..., None, None]).square().sum(2, keepdim=True) > 0.25
    return (away(BACKGROUND_RGB[background]) & away(OCCLUDER_RGB)).float()


# ---- presets: every size and schedule of a run ---------------------------------------------------
#   python train.py --preset tiny [--stage 0] [--set teacher_steps=8000 --out runs/longer]   (--help: the rest)

@dataclass
class Preset:
    model: dict = field(default_factory=dict)   # VideoSSMConfig fields
    world: dict = field(default_factory=dict)   # World fields (not size, which is the model's frame_size)
    clip_frames: int = 12         # the teacher's clip length; stage 2's DMD window too
    shift: float = 3.0            # timestep shift (Wan) of sampling and distillation: leans to high noise
    denoising_steps: int = 4      # the student's few steps
    cfg_scale: float = 1.5        # classifier-free guidance of the teacher (ODE pairs, real score)
    save_every: int = 100         # steps between resumable checkpoints
    # stage 0: the teacher
    teacher_steps: int = 2000
    teacher_batch: int = 8
    teacher_lr: float = 2e-3
    image_batch: int = 0          # >0: every other teacher step is this many single frames instead of clips (as Wan)
    warmup: int = 100             # steps of linear learning-rate warmup (at most a tenth of a stage), then cosine to 10%
    compile: bool = False         # torch.compile the teacher's training forward (faster after a minute compiling)
    text_dropout: float = 0.1     # captions replaced by "" (the unconditional input for CFG)
    sprite_weight: float = 0.0    # the teacher's loss counts sprite pixels 1 + this many times (0: plain flow matching)
    ema_decay: float = 0.995
    # stage 1: causal ODE distillation
    ode_clips: int = 256          # teacher trajectories to regress
    ode_steps: int = 24           # Euler steps of each teacher trajectory
    student_steps: int = 600
    student_batch: int = 8
    student_lr: float = 3e-4
    # stage 2: self-rollout with DMD
    dmd_steps: int = 200
    dmd_batch: int = 4
    rollout_frames: int = 48      # longest self-rollout (4x the teacher's clip)
    critic_updates: int = 2       # critic steps per generator step
    critic_warmup: int = 20       # first steps train only the critic, so it knows the student's samples before DMD uses it
    dmd_lr: float = 1e-4
    critic_lr: float = 2e-4
    switch_probability: float = 0.25  # rollouts that switch prompt (LongLive)
    dmd_regression: float = 1.0   # weight of stage 1's ODE regression in stage 2's loss, DMD's anchor (0: none)
    # stage 2's last phase: the memory recalls what left the window (MemoryRecall; 0 steps: none)
    memory_steps: int = 0
    memory_lr: float = 3e-3
    memory_rest_lr: float = 0.0   # the rest of the student's learning rate in the phase (0: only the memory trains)
    memory_clips: int = 2         # world clips with a sprite's return per step
    memory_worlds: tuple = ()     # the worlds those clips come from, World fields each (none: recall_world); a family
                                  # for recall on unseen worlds (docs/experiments.md); HELD_OUT_WORLDS stay out
    memory_clip_frames: int = 72  # their length: room for a hidden span longer than sink + window
    memory_free_frames: int = 36  # the free rollout the anchor covers
    memory_anchor: float = 10.0   # weight of the squared difference to the frozen stage-2 student, off the sprite
    memory_free_anchor: float = 100.0  # and on the free rollout

    def __post_init__(self):
        """Values a run can use: one clear error now, not an untrained checkpoint or a traceback later."""
        cfg = tv.VideoSSMConfig(**self.model)                          # the model's own checks: dim % n_heads, ...
        for world in (self.world, *self.memory_worlds):
            World(cfg.frame_size, **world)
        for name, value in vars(self).items():
            zero = name in ZERO_ALLOWED
            if not isinstance(value, (dict, bool, tuple)) and not (math.isfinite(value) and (value > 0 or zero and value == 0)):
                raise ValueError(f"{name}={value}: must be a finite number {'>= 0' if zero else '> 0'}")
            if name in ("text_dropout", "switch_probability", "ema_decay") and value > 1:
                raise ValueError(f"{name}={value}: must be between 0 and 1")
        lengths = {n: getattr(self, n) for n in ("clip_frames", "rollout_frames", "memory_clip_frames", "memory_free_frames")}
        if any(frames % cfg.chunk_frames for frames in lengths.values()) or self.rollout_frames < self.clip_frames:
            raise ValueError(f"{', '.join(f'{n}={v}' for n, v in lengths.items())} must be whole chunks of "
                             f"{cfg.chunk_frames} frames, and rollout_frames >= clip_frames")
        if self.critic_warmup >= self.dmd_steps:
            raise ValueError(f"critic_warmup={self.critic_warmup}: must be < dmd_steps={self.dmd_steps}")


ZERO_ALLOWED = {"image_batch", "warmup", "critic_warmup", "sprite_weight", "dmd_regression", "cfg_scale", "text_dropout",
                "switch_probability", "ema_decay", "memory_steps", "memory_rest_lr", "memory_anchor", "memory_free_anchor"}


# the shipped models' recipe (its time on a 2-core CPU: README)
TINY = Preset(model=dict(frame_size=32, patch_size=4, dim=128, n_heads=4, n_layers=4, ffn_dim=512, text_dim=64,
                         freq_dim=64, chunk_frames=3, sink_chunks=1, window_chunks=2, router_horizon=48),
              compile=True, teacher_steps=5000, teacher_batch=4, image_batch=48, warmup=200, sprite_weight=1.0,
              ode_clips=192, ode_steps=16, student_steps=250, student_batch=4, dmd_steps=160, dmd_batch=2,
              memory_steps=400, memory_rest_lr=1e-4, save_every=25,
              memory_worlds=(dict(occluder=4), dict(occluder=6), dict(occluder=8), dict(arena_scale=2.0),
                             dict(arena_scale=2.0, occluder=3), dict(arena_scale=1.75, occluder=6),
                             dict(occluder=4, min_speed=1.0, max_speed=2.0)))

PRESETS = {
    # seconds: for the tests
    "test": Preset(model=dict(frame_size=16, patch_size=4, dim=32, n_heads=2, n_layers=2, ffn_dim=64, text_dim=16,
                              freq_dim=16, chunk_frames=2, sink_chunks=1, window_chunks=2, router_horizon=12),
                   clip_frames=8, teacher_steps=6, teacher_batch=2, warmup=2, save_every=3, ode_clips=4, ode_steps=4,
                   student_steps=6, student_batch=2, dmd_steps=4, dmd_batch=2, critic_warmup=1, rollout_frames=12,
                   denoising_steps=2, memory_steps=2, memory_clips=1, memory_clip_frames=32, memory_free_frames=8),
    # tiny's recipe in under 40 minutes: each stage shorter, the phase's rest moving faster (README)
    "quick": replace(TINY, teacher_steps=1500, ode_clips=96, student_steps=100, dmd_steps=60, memory_steps=220,
                     memory_rest_lr=3e-4),
    "tiny": TINY,
    # tiny's recipe on a GPU: wider, deeper, longer
    "gpu": replace(TINY, model=dict(TINY.model, patch_size=2, dim=384, n_heads=6, n_layers=8, ffn_dim=1536,
                                    text_dim=128, freq_dim=128, window_chunks=3, router_horizon=96),
                   teacher_steps=20000, teacher_batch=32, image_batch=256, teacher_lr=5e-4, ode_clips=4096,
                   student_steps=6000, student_batch=32, dmd_steps=2000, dmd_batch=8, rollout_frames=96,
                   memory_steps=1000, save_every=100),
}


# ---- stage 0: the teacher ------------------------------------------------------------------------

def flow_matching_error(model, x0, noise, sigma, text, autocast):
    """The flow-matching loss before it is averaged: the squared error of the velocity the model predicts
    at x_s = (1 - s) x0 + s eps, against eps - x0; (B, F, C, H, W). The teacher learns it on world clips,
    the critic (stage 2) on the student's samples."""
    with autocast():
        velocity = model(tv.add_noise(x0, noise, sigma), 1000 * sigma, text)
    return (velocity.float() - tv.velocity_target(x0, noise)).square()


def bin_losses(sigma, per_sample_loss, bins=4):
    """The mean loss in each of `bins` equal bins of the noise level s, logged as s0 (s near 0) up to
    s{bins - 1} (s near 1), to see at which noise levels the loss sits."""
    index = (sigma * bins).long().clamp(max=bins - 1)
    return {f"s{b}": per_sample_loss[index == b].mean().item() for b in range(bins) if (index == b).any()}


class Teacher:
    """Stage 0. Bidirectional DiT + text encoder, flow matching on world clips (and on batches of
    single frames between clip steps when the preset says so), text dropout for CFG, EMA."""
    name, resume_file = "stage 0 (teacher)", "teacher.resume.pt"

    def __init__(self, run, preset, preset_name):
        self.run, self.preset, self.preset_name, self.log = run, preset, preset_name, []
        self.steps = preset.teacher_steps
        cfg = tv.VideoSSMConfig(**preset.model, causal=False)
        torch.manual_seed(run.seed)
        self.model = tv.VideoDiT(cfg).to(run.device)
        self.text_encoder = tv.TextEncoder(VOCAB, cfg.text_dim).to(run.device)
        self.trained_parameters = [*self.model.parameters(), *self.text_encoder.parameters()]
        self.optimizer = torch.optim.AdamW(self.trained_parameters, lr=preset.teacher_lr, betas=(0.9, 0.99), weight_decay=0.01)
        self.ema = EMA(self.model, preset.ema_decay)
        self.ema_text = EMA(self.text_encoder, preset.ema_decay)
        self.train_forward = self.model         # the forward train_step calls: the model, compiled where it can be
        if preset.compile:                      # same weights either way; on a CPU inductor needs a C++ compiler
            if run.device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
                print("stage 0: no C++ compiler found (g++, c++ or clang++), so the teacher trains without "
                      "torch.compile (slower)")
            else:
                self.train_forward = torch.compile(self.model, dynamic=False)   # one graph per shape (clips, images)
        self.world = World(cfg.frame_size, **preset.world)
        self.modules = {"model": self.model, "text_encoder": self.text_encoder, "optimizer": self.optimizer,
                        "ema": self.ema.module, "ema_text": self.ema_text.module}

    def train_step(self, step):
        run, preset = self.run, self.preset
        # data: world clips, or (joint image-video training, as Wan) batches of single frames, which
        # teach what a frame looks like many times faster than clips, whose frames repeat one another
        images = preset.image_batch > 0 and step % 2 == 1
        B, frames = (preset.image_batch, 1) if images else (preset.teacher_batch, preset.clip_frames)
        clips = self.world.sample(B, frames, seed=run.generator(0, step).initial_seed())
        gen = run.generator(0, step, 1)
        captions = [c[0] if u >= preset.text_dropout else "" for c, u in zip(clips.captions, torch.rand(B, generator=gen))]
        # loss: flow matching at a uniform noise level per clip
        x0 = clips.video.to(run.device)
        noise = torch.randn(x0.shape, generator=gen).to(run.device)
        sigma = torch.rand(B, generator=gen).to(run.device)
        squared_error = flow_matching_error(self.train_forward, x0, noise, sigma, self.text_encoder(captions), run.autocast)
        # The sprite weight (ours, not Wan's): sprites are a few percent of the pixels, and a small
        # teacher lowers the plain loss most cheaply by painting the background well and the sprites
        # faintly. Counting sprite pixels more tilts it towards drawing them, a bias by design, as
        # CFG is a bias towards the caption.
        weight = 1 + preset.sprite_weight * sprite_mask(x0, clips.background)    # (B, F, 1, H, W)
        per_sample = (weight * squared_error).flatten(1).mean(1)                                # (B,)
        loss = per_sample.mean()
        # update: AdamW, then the EMA the teacher samples with
        optimizer_step(run, self.optimizer, self.trained_parameters,
                       learning_rate(step, self.steps, preset.teacher_lr, preset.warmup), loss)
        self.ema.update(self.model)
        self.ema_text.update(self.text_encoder)
        return {"loss": loss.item(), **bin_losses(sigma.cpu(), per_sample.detach().cpu())}

    def finish(self):
        release(self.run.path("teacher.pt"), 0, self.preset_name, self.ema.module, self.ema_text.module, self.log)


def guided_velocity(teacher, x, t, text, empty, cfg_scale):
    """Classifier-free guidance, both forwards in one batch; `empty` is the empty prompt's text features."""
    v_cond, v_uncond = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, empty])).float().chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def teacher_sample(teacher, text_encoder, captions, frames, steps, shift, cfg_scale, generator, keep_sigmas=()):
    """Euler steps of the teacher's ODE with classifier-free guidance, from noise (s = 1) to s = 0.
    Returns the clean clips (B, F, C, H, W) and the states at `keep_sigmas` (for stage 1's pairs)."""
    device = next(teacher.parameters()).device
    cfg = teacher.cfg
    B = len(captions)
    # the grid: `steps` shifted levels, with the levels to keep spliced in exactly
    grid = sorted({float(tv.shift_sigma(torch.tensor(1 - i / steps), shift)) for i in range(steps)}
                  | {float(s) for s in keep_sigmas} | {0.0}, reverse=True)
    text = text_encoder(captions).to(device)
    empty = text_encoder([""] * B).to(device)
    x = torch.randn((B, frames, cfg.channels, cfg.frame_size, cfg.frame_size), generator=generator).to(device)
    kept = {}
    for s, s_next in zip(grid, grid[1:]):
        if s in keep_sigmas:
            kept[s] = x.clone()
        t = torch.full((B,), 1000 * s, device=device)
        x = x + (s_next - s) * guided_velocity(teacher, x, t, text, empty, cfg_scale)   # Euler step, s decreasing
    return x, [kept[s] for s in keep_sigmas]


# ---- stage 1: causal ODE distillation ------------------------------------------------------------

def student_from_teacher(teacher, mode):
    """(D9) The causal student starts as the teacher: same weights, plus memory weights whose path
    outputs exactly 0 (g_out zero), so at step 0 it is the block-causal teacher."""
    cfg = tv.VideoSSMConfig(**{**asdict(teacher.cfg), "causal": True, "mode": mode})
    student = tv.VideoDiT(cfg).to(next(teacher.parameters()).device)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(".self_attn." in name for name in missing), (missing, unexpected)
    return student


def ode_pairs(run, preset, preset_name, teacher, text_encoder, sigmas):
    """Teacher trajectories for random captions at the student's levels `sigmas`, and their clean ends; cached."""
    path = run.path("ode_pairs.pt")
    made_by = [preset_name, preset.ode_clips, preset.ode_steps, run.seed,
               float(sum(p.detach().double().sum() for p in teacher.parameters()))]  # a retrained teacher differs
    if os.path.exists(path):
        try:
            pairs = torch.load(path, weights_only=True)
        except Exception as error:                       # a cache: a broken one is made again
            pairs = {}
            print(f"{path} cannot be read ({type(error).__name__}); making new pairs")
        if pairs.get("made_by") == made_by:
            return pairs
        if pairs:
            print(f"{path} was made by another teacher or preset; making new pairs")
    batch = 16
    noisy, clean, captions = [], [], []
    for start in tqdm(range(0, preset.ode_clips, batch), desc="teacher ODE pairs", disable=run.rank != 0):
        gen = torch.Generator().manual_seed(run.seed * 7919 + start)
        names = [random_caption(gen) for _ in range(min(batch, preset.ode_clips - start))]
        with run.autocast():
            x0, kept = teacher_sample(teacher, text_encoder, names, preset.clip_frames, preset.ode_steps,
                                      preset.shift, preset.cfg_scale, gen, keep_sigmas=sigmas)
        noisy.append(torch.stack(kept, 1).float().cpu())
        clean.append(x0.float().cpu())
        captions += names
    pairs = {"noisy": torch.cat(noisy), "clean": torch.cat(clean), "captions": captions,   # (clips, levels, F, ...)
             "made_by": made_by}
    if run.rank == 0:
        save_checkpoint(path, pairs)
    return pairs


def ode_batch(run, preset, cfg, pairs, sigmas, gen):
    """Stage 1's data: `student_batch` pairs, each chunk at its own level: noisy x, sigma (B, F), clean, captions."""
    index = torch.randint(len(pairs["captions"]), (preset.student_batch,), generator=gen)
    clean = pairs["clean"][index].to(run.device)                                         # (B, F, C, H, W)
    n_chunks = preset.clip_frames // cfg.chunk_frames
    level = torch.randint(len(sigmas), (len(index), n_chunks), generator=gen)            # per chunk
    noisy = pairs["noisy"][index[:, None], level]                                        # (B, n, F, C, H, W)
    chunk_of_frame = torch.arange(preset.clip_frames) // cfg.chunk_frames
    x = noisy[:, chunk_of_frame, torch.arange(preset.clip_frames)].to(run.device)        # (B, F, C, H, W)
    sigma = torch.tensor(sigmas)[level][:, chunk_of_frame].to(run.device)                # (B, F)
    return x, sigma, clean, [pairs["captions"][i] for i in index]


def ode_regression_loss(run, model, text_encoder, x, sigma, clean, captions):
    """Stage 1's loss: one parallel block-causal forward, the clean clip as context; MSE to the teacher's clip."""
    text = text_encoder(captions)
    with run.autocast():
        velocity = model(x, 1000 * sigma, text, clean_context=clean)
    return (tv.x0_from_velocity(x, velocity.float(), sigma) - clean).square().mean()


class ODEDistillation:
    """Stage 1. Regress the teacher's ODE solutions; the memory is built in the graph as streaming builds it (D11)."""
    name, resume_file = "stage 1 (ODE distillation)", "student_stage1.resume.pt"

    def __init__(self, run, preset, preset_name, mode):
        self.run, self.preset, self.preset_name, self.log = run, preset, preset_name, []
        self.steps = preset.student_steps
        teacher, self.text_encoder = (m.to(run.device) for m in build(load_checkpoint(run.path("teacher.pt"))))
        self.sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.shift)
        self.pairs = ode_pairs(run, preset, preset_name, teacher, self.text_encoder, self.sigmas)
        self.model = student_from_teacher(teacher, mode).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=preset.student_lr, betas=(0.9, 0.99))
        self.modules = {"model": self.model, "optimizer": self.optimizer}

    def train_step(self, step):
        run, preset = self.run, self.preset
        # data: a batch of the teacher's pairs, each chunk at one of the student's levels
        x, sigma, clean, captions = ode_batch(run, preset, self.model.cfg, self.pairs, self.sigmas, run.generator(1, step))
        # loss: the student's clean clip against the teacher's
        loss = ode_regression_loss(run, self.model, self.text_encoder, x, sigma, clean, captions)
        # update: AdamW
        optimizer_step(run, self.optimizer, list(self.model.parameters()),
                       learning_rate(step, self.steps, preset.student_lr, preset.warmup), loss)
        return {"loss": loss.item()}

    def finish(self):
        release(self.run.path("student_stage1.pt"), 1, self.preset_name, self.model, self.text_encoder, self.log)


# ---- stage 2: long self-rollout with DMD (E11) ---------------------------------------------------

def dmd_loss(x, x0_real, x0_fake):
    """Distribution matching distillation (DMD, E11). Its gradient with respect to the generated
    clip x is proportional to (x0_fake - x0_real) / mean|x - x0_real| (per clip; the loss is a mean over
    the batch's elements): move x away from what the critic thinks generated clips look like, towards
    what the teacher thinks real ones look like. A surrogate MSE to a detached target carries that
    gradient; real == fake gives zero."""
    normaliser = (x - x0_real).abs().flatten(1).mean(1).clamp_min(1e-6)                # (B,)
    direction = (x0_fake - x0_real) / normaliser.view(-1, *[1] * (x.dim() - 1))
    target = (x - direction).detach()
    return 0.5 * (x - target).square().flatten(1).sum(1).mean() / x[0].numel()


class SelfRolloutDMD:
    """Stage 2. The student streams a long video with its own cache (the sampler's code); a teacher-length
    window cut from it gets the DMD loss: real score = frozen teacher with CFG, fake score = a critic trained on
    the student's samples. As in the DMD paper, a regression anchors DMD against collapsing to the teacher's
    commonest picture: stage 1's loss on the teacher's ODE pairs stays in the generator's loss (`dmd_regression`)."""
    name, resume_file = "stage 2 (self-rollout DMD)", "student.resume.pt"

    def __init__(self, run, preset, preset_name, released="student.pt"):
        self.run, self.preset, self.preset_name, self.log = run, preset, preset_name, []
        self.steps, self.released = preset.dmd_steps, released
        self.teacher, self.text_encoder = (m.to(run.device) for m in build(load_checkpoint(run.path("teacher.pt"))))
        self.teacher.requires_grad_(False)
        self.critic = copy.deepcopy(self.teacher).requires_grad_(True).train()
        self.model = build(load_checkpoint(run.path("student_stage1.pt")))[0].to(run.device).train().requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=preset.dmd_lr, betas=(0.0, 0.99))
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=preset.critic_lr, betas=(0.0, 0.99))
        self.modules = {"model": self.model, "optimizer": self.optimizer,
                        "critic": self.critic, "critic_optimizer": self.critic_optimizer}
        self.sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.shift)
        self.pairs = (ode_pairs(run, preset, preset_name, self.teacher, self.text_encoder, self.sigmas)
                      if preset.dmd_regression > 0 else None)   # stage 1's cached pairs (or the same made again)

    def rollout(self, step, grad=True):
        """A self-rollout to a random chunk: its last clip_frames frames (in the graph if `grad`) and their caption."""
        run, preset, cfg = self.run, self.preset, self.model.cfg
        gen = run.generator(2, step)
        window = preset.clip_frames // cfg.chunk_frames
        end = int(torch.randint(window, preset.rollout_frames // cfg.chunk_frames + 1, (1,), generator=gen))
        first, exit_step = end - window, int(torch.randint(len(self.sigmas), (1,), generator=gen))
        caption = random_caption(gen)
        prompts = {0: caption}
        if first > 0 and torch.rand(1, generator=gen).item() < preset.switch_probability:
            caption = random_caption(gen)
            prompts[int(torch.randint(1, first + 1, (1,), generator=gen))] = caption
        # (D11) autograd on for the window's chunks and for the chunks they evict into memory
        grad_chunks = set(range(max(0, first - cfg.window_chunks), end)) if grad else set()
        with run.autocast():
            chunks = list(tv.generate(self.model, self.text_encoder, prompts, end, self.sigmas, gen,
                                      batch_size=preset.dmd_batch, exit_step=exit_step, grad_chunks=grad_chunks))
        return torch.cat(chunks[first:], 1).float(), caption

    def scores(self, x, caption, gen):
        """The teacher's (with CFG) and the critic's clean predictions for x noised to a random level."""
        B = x.shape[0]
        # uniform levels, as in DMD (docs/experiments.md compares the sampler's shifted ones)
        sigma = (0.02 + 0.96 * torch.rand(B, generator=gen)).to(x.device)
        x_s = tv.add_noise(x, torch.randn(x.shape, generator=gen).to(x.device), sigma)
        text, empty = self.text_encoder([caption] * B), self.text_encoder([""] * B)
        with torch.no_grad(), self.run.autocast():
            v_real = guided_velocity(self.teacher, x_s, 1000 * sigma, text, empty, self.preset.cfg_scale)
            v_fake = self.critic(x_s, 1000 * sigma, text).float()
        return tv.x0_from_velocity(x_s, v_real, sigma), tv.x0_from_velocity(x_s, v_fake, sigma)

    def critic_loss(self, x, caption, gen):
        """The critic's flow matching on the student's samples x, at the sampler's shifted levels, where they live."""
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        sigma = tv.shift_sigma(torch.rand(x.shape[0], generator=gen), self.preset.shift).to(x.device)
        text = self.text_encoder([caption] * x.shape[0])
        return flow_matching_error(self.critic, x, noise, sigma, text, self.run.autocast).mean()

    def train_step(self, step):
        run, preset = self.run, self.preset
        warming_up = step < preset.critic_warmup           # the critic first learns what the student makes
        anchored = not warming_up and preset.dmd_regression > 0
        # data: a self-rollout's last clip (in the graph once the critic has warmed up), stage 1's pairs for the anchor
        x, caption = self.rollout(step, grad=not warming_up)
        pairs = ode_batch(run, preset, self.model.cfg, self.pairs, self.sigmas, run.generator(3, step)) if anchored else ()
        # loss: DMD on the clip, plus stage 1's regression
        gen = run.generator(2, step, 1)
        x0_real, x0_fake = self.scores(x.detach(), caption, gen)
        loss = dmd_loss(x, x0_real, x0_fake)
        regression = ode_regression_loss(run, self.model, self.text_encoder, *pairs) if anchored else torch.zeros(())
        # update: the student once the critic has warmed up; then the critic, `critic_updates` times on the same samples
        if not warming_up:
            lr = learning_rate(step - preset.critic_warmup, self.steps - preset.critic_warmup, preset.dmd_lr,
                               preset.warmup)
            optimizer_step(run, self.optimizer, list(self.model.parameters()), lr,
                           loss + preset.dmd_regression * regression)
        for _ in range(preset.critic_updates):            # the critic follows the generator's latest samples
            critic_loss = self.critic_loss(x.detach(), caption, gen)
            optimizer_step(run, self.critic_optimizer, list(self.critic.parameters()),
                           learning_rate(step, self.steps, preset.critic_lr, preset.warmup), critic_loss)
        return {"dmd": loss.item(), "regression": regression.item(), "critic": critic_loss.item()}

    def finish(self):
        release(self.run.path(self.released), 2, self.preset_name, self.model, self.text_encoder, self.log)


# ---- stage 2, last phase: the memory asked for what left the window (ours) -------------------------

def recall_world(preset, cfg):
    """The preset's world, with curtains (world.occluder = 4) if it has none: sprites hide behind
    them longer than the sink and the window can bridge, then come back."""
    world = World(cfg.frame_size, **preset.world)
    return world if world.occluder else World(cfg.frame_size, **{**preset.world, "occluder": 4})


class Return(NamedTuple):
    """A ground-truth clip in which a sprite leaves sight for longer than the sink and the window hold,
    and comes back: then only the memory can tell its colour."""
    video: torch.Tensor  # (1, F, 3, H, W)
    caption: str
    colour: int          # index into SPRITE_COLOURS
    context: int         # chunks of ground truth the recall probe feeds: the last window_chunks show none of it
    back: int            # the frame in which a pixel of it is in sight again
    clearly_back: int    # the frame in which it is clearly back (8 pixels: measure/ reads it)


def sprite_absence(area, cfg):
    """From one sprite's visible pixels per frame, area (F,): (context, back, clearly_back, hidden_at) as in
    Return, hidden_at the frame it leaves sight, if it is out of sight in the sink's frames, seen clearly, then
    hidden until the window holds none of it, and clearly back at least four chunks before the end; else None."""
    cf, frames, area = cfg.chunk_frames, len(area), area.tolist()
    seen, hidden = [a >= 8 for a in area], [a < 1 for a in area]    # clearly; not one pixel in sight
    if any(a >= 1 for a in area[:cfg.sink_chunks * cf]) or True not in seen:
        return None
    first = seen.index(True)
    hidden_at = hidden.index(True, first) if True in hidden[first:] else frames
    back = hidden.index(False, hidden_at) if False in hidden[hidden_at:] else frames
    clearly_back = seen.index(True, back) if True in seen[back:] else frames
    context = math.ceil(hidden_at / cf) + cfg.window_chunks   # the first chunk after the window emptied
    return (context, back, clearly_back, hidden_at) if context * cf <= back and clearly_back <= frames - 4 * cf else None


def sprite_returns(world, cfg, count, frames, seed):
    """Up to `count` Returns among one-sprite clips (sprite_absence); switched or two-sprite: measure/benchmark.py."""
    found = []
    for batch in range(64):                                   # a search: the clips are rare, not scarce
        clips = world.sample(32, frames, seed=seed + 1000 * batch)
        for b in torch.nonzero(clips.count == 1).flatten().tolist():
            span = sprite_absence(clips.visible_area[b, :, 0], cfg)
            if span:
                found.append(Return(clips.video[b:b + 1], clips.captions[b][0], int(clips.sprite_colour[b, 0]),
                                    *span[:3]))
                if len(found) == count:
                    return found
    return found


def feed_context(model, text_encoder, cache, clip, chunks):
    """Feed a Return's first `chunks` chunks under its caption: the cache is then as if the model had streamed them."""
    cf, device = model.cfg.chunk_frames, next(model.parameters()).device
    cache.set_prompt(model, text_encoder([clip.caption]))
    tv.teacher_force(model, cache, clip.video[:, :chunks * cf].to(device))


def paired_chunks(model, frozen, caches, num_chunks, exit_step, sigmas, gen):
    """The trained student makes `num_chunks` chunks with the sampler's chain to `exit_step` (its prediction in
    the graph); the frozen student predicts from the same input. Both caches get the trained student's chunks,
    its clean pass in the graph so that the memory's write path learns (D11). Both predictions, (B, F, C, H, W)."""
    cfg, device, made, frozen_made = model.cfg, next(model.parameters()).device, [], []
    shape = (1, cfg.chunk_frames, cfg.channels, cfg.frame_size, cfg.frame_size)
    noise = lambda: torch.randn(shape, generator=gen).to(device)
    for _ in range(num_chunks):
        x, s, x0 = tv.denoise_chunk(model, caches[0], sigmas, exit_step, noise, grad=True)
        with torch.no_grad():
            frozen_made.append(tv.x0_from_velocity(x, frozen.forward_chunk(x, 1000 * s, caches[1]), s))
            frozen.forward_chunk(x0.detach(), 0.0, caches[1], write=True)
        model.forward_chunk(x0.detach(), 0.0, caches[0], write=True)       # (D8) the clean pass
        made.append(x0)
    return torch.cat(made, 1), torch.cat(frozen_made, 1)


def colour_loss(x0, frozen_x0, background, colour):
    """Where the frozen student draws a sprite: cross-entropy of each pixel over the four sprite colours, the
    true colour the target, so a pixel may move towards it but not out of the sprite colours. Elsewhere, the
    squared difference to the frozen student. x0, frozen_x0: (1, F, C, H, W). Returns both terms and whether
    the sprite's pixels, summed, pick the true colour."""
    sprite = sprite_mask(frozen_x0, background)                                           # (1, F, 1, H, W)
    logits = -(x0.movedim(2, -1)[..., None, :] - SPRITE_RGB.to(x0.device)).square().sum(-1)  # (1, F, H, W, 4)
    log_p, where = torch.log_softmax(logits, -1), sprite[:, :, 0]                         # where: (1, F, H, W)
    cross_entropy = -(log_p[..., colour] * where).sum() / where.sum().clamp_min(1.0)
    outside = ((x0 - frozen_x0).square() * (1 - sprite)).mean()
    picks_true_colour = bool((log_p.exp() * where[..., None]).flatten(0, -2).sum(0).argmax() == colour)
    return cross_entropy, outside, picks_true_colour


class MemoryRecall:
    """Stage 2's last phase (ours, not the paper's), one question: after ground truth in which a sprite
    left sight for longer than the sink and the window hold, does the sprite the student brings back
    have its colour? Neither stage asks it: stage 1's teacher clips are too short to hide a sprite that
    long, and DMD's teacher sees only the window. The memory (GatedDeltaMemory) trains at `memory_lr`,
    the rest of the student at `memory_rest_lr`; an anchor to the frozen stage-2 student keeps the rest
    as it was, off the sprite (`memory_anchor`) and on a free rollout (`memory_free_anchor`)."""
    name, resume_file = "stage 2 (memory recall)", "student_memory.resume.pt"

    def __init__(self, run, preset, preset_name, dmd_file):
        self.run, self.preset, self.preset_name, self.log = run, preset, preset_name, []
        self.steps = preset.memory_steps
        checkpoint = load_checkpoint(run.path(dmd_file))
        self.model, self.text_encoder = (m.to(run.device) for m in build(checkpoint))
        self.frozen = build(checkpoint)[0].to(run.device).requires_grad_(False)
        self.memory = [p for name, p in self.model.named_parameters() if ".memory." in name]
        if not tv.uses_memory(self.model.cfg.mode):
            raise SystemExit(f"{run.path(dmd_file)} has no memory to train (mode {self.model.cfg.mode}): set "
                             f"memory_steps=0 for sink and window students")
        rest = [p for name, p in self.model.named_parameters() if ".memory." not in name] if preset.memory_rest_lr else []
        self.model.requires_grad_(False).train()
        self.trained = self.memory + rest
        for p in self.trained:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW([{"params": self.memory}, *([{"params": rest}] if rest else [])],
                                           lr=preset.memory_lr, betas=(0.9, 0.99))
        self.modules = {"model": self.model, "optimizer": self.optimizer}
        size = self.model.cfg.frame_size
        self.worlds = [World(size, **w) for w in preset.memory_worlds] or [recall_world(preset, self.model.cfg)]
        self.sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.shift)

    def train_step(self, step):
        preset, model, frozen, cf = self.preset, self.model, self.frozen, self.model.cfg.chunk_frames
        gen = self.run.generator(4, step)
        # data: the exit step, and clips from the family's worlds whose sprite returns after the window lost sight of it
        exit_step = int(torch.randint(len(self.sigmas), (1,), generator=gen))
        returns = []
        for _ in range(preset.memory_clips):
            world = self.worlds[int(torch.randint(len(self.worlds), (1,), generator=gen))]
            seed = int(torch.randint(2 ** 62, (1,), generator=gen))
            returns += sprite_returns(world, model.cfg, 1, preset.memory_clip_frames, seed)
        if len(returns) < preset.memory_clips:
            raise SystemExit(f"too few sprites in 2048 world clips of {preset.memory_clip_frames} frames come back "
                             f"after the window lost sight of them: raise memory_clip_frames")
        # loss: ground truth up to each return, the return's two chunks scored for colour; then a free rollout to anchor
        with self.run.autocast():
            colour, anchor, right = 0.0, 0.0, 0
            for clip in returns:
                r = clip.back // cf              # the chunk it comes back in; the context before it shows none of it
                caches = [tv.StreamCache(m, 1, device=self.run.device) for m in (model, frozen)]
                for student, cache in zip((model, frozen), caches):
                    with torch.set_grad_enabled(student is model):
                        feed_context(student, self.text_encoder, cache, clip, r)
                made, frozen_made = paired_chunks(model, frozen, caches, 2, exit_step, self.sigmas, gen)
                background = parse_caption(clip.caption).background
                clip_colour, clip_anchor, clip_right = colour_loss(made, frozen_made, background, clip.colour)
                colour, anchor = colour + clip_colour / preset.memory_clips, anchor + clip_anchor / preset.memory_clips
                right += clip_right
            caption = random_caption(gen)
            caches = [tv.StreamCache(m, 1, device=self.run.device) for m in (model, frozen)]
            for student, cache in zip((model, frozen), caches):
                cache.set_prompt(student, self.text_encoder([caption]))
            free_chunks = preset.memory_free_frames // cf
            made, frozen_made = paired_chunks(model, frozen, caches, free_chunks, exit_step, self.sigmas, gen)
            free = (made - frozen_made).square().mean()
        loss = colour + preset.memory_anchor * anchor + preset.memory_free_anchor * free
        # update: the memory at memory_lr, the rest of the student at memory_rest_lr
        optimizer_step(self.run, self.optimizer, self.trained, [preset.memory_lr, preset.memory_rest_lr], loss)
        return {"colour": colour.item(), "anchor": anchor.item(), "free": free.item(),
                "right": right / preset.memory_clips}          # share of clips whose sprite reads the true colour

    def finish(self):
        self.model.eval()
        release(self.run.path("student.pt"), 2, self.preset_name, self.model, self.text_encoder, self.log)


# ---- the harness: devices, data parallel, checkpoints, the loop every stage shares ----------------

CHECKPOINT_FORMAT = "tiny-videossm/1"

class Run:
    """Where a run happens: device, autocast, data-parallel rank, checkpoint folder. Every rank builds the
    same weights (one seed, the same files) and averages its gradients, so the ranks stay equal."""

    def __init__(self, device, out_dir, seed):
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
        self.distributed = "RANK" in os.environ                          # launched by torchrun
        if self.distributed:
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        self.device = torch.device(device, torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
        self.out_dir, self.seed = out_dir, seed
        try:
            os.makedirs(out_dir, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise SystemExit(f"--out {out_dir}: a file is in the way (it must be a folder); name another folder")
        if self.rank == 0:
            remove_stale_temporary_files(out_dir)

    def autocast(self):
        return torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda")

    def generator(self, *keys):
        """A fresh generator per (stage, step, rank, ...): no RNG state to save for an exact resume."""
        seed = self.seed
        for key in (*keys, self.rank):
            seed = (seed * 1_000_003 + key) % 2 ** 63
        return torch.Generator().manual_seed(seed)

    def average_gradients(self, parameters):
        """Data parallel, spelled out: sum every gradient over the ranks and divide (what DDP does)."""
        if self.distributed:
            for p in parameters:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size

    def check_in_sync(self, module):
        if self.distributed:
            total = sum(p.double().sum() for p in module.state_dict().values()).reshape(1).to(self.device)
            gathered = [torch.zeros_like(total) for _ in range(self.world_size)]
            dist.all_gather(gathered, total)
            if not all(torch.equal(g, gathered[0]) for g in gathered):
                raise RuntimeError(f"the ranks' weights differ at the end of a stage: {gathered}")

    def path(self, name):
        return os.path.join(self.out_dir, name)


def save_checkpoint(path, checkpoint):
    """Write atomically: a temporary file in the same folder, then a rename. A crash leaves the old file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def remove_stale_temporary_files(folder):
    """Temporary files of saves that were killed (their process is gone): NAME.PID.tmp."""
    for name in os.listdir(folder):
        parts = name.split(".")
        if len(parts) > 2 and parts[-1] == "tmp" and parts[-2].isdigit():
            try:
                os.kill(int(parts[-2]), 0)              # signal 0: only asks whether the process exists
            except ProcessLookupError:
                os.remove(os.path.join(folder, name))
            except PermissionError:                     # alive, someone else's
                pass


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}: train one with `python train.py --preset tiny`, "
                         f"or pass the path of one")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SystemExit(f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint "
                         f"({type(error).__name__}). Delete it and train again.") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path} is not a tiny-videossm checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def build(checkpoint):
    """The model and text encoder stored in a checkpoint, in float32, in eval mode."""
    cfg = tv.VideoSSMConfig(**checkpoint["config"])
    model = tv.VideoDiT(cfg)
    model.load_state_dict({k: v.float() for k, v in checkpoint["model"].items()})
    text_encoder = tv.TextEncoder(checkpoint["vocab"], cfg.text_dim)
    text_encoder.load_state_dict({k: v.float() for k, v in checkpoint["text_encoder"].items()})
    return model.eval(), text_encoder.eval().requires_grad_(False)


def release(path, stage, preset_name, model, text_encoder, log):
    """The checkpoint sample.py and the notebooks read: weights in half precision, no optimizer."""
    half = lambda module: {k: v.half() for k, v in module.state_dict().items()}
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "stage": stage, "preset": preset_name,
                           "config": asdict(model.cfg), "vocab": text_encoder.vocab,
                           "model": half(model), "text_encoder": half(text_encoder), "log": log})


class EMA:
    """Exponential moving average of a module's weights (what the teacher samples with)."""

    def __init__(self, module, decay):
        self.module, self.decay = copy.deepcopy(module).requires_grad_(False), decay

    @torch.no_grad()
    def update(self, module):
        for ema, live in zip(self.module.state_dict().values(), module.state_dict().values()):
            ema.lerp_(live, 1 - self.decay) if ema.is_floating_point() else ema.copy_(live)


def learning_rate(step, total, peak, warmup):
    warmup = min(warmup, total // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(run, optimizer, parameters, lr, loss):
    """backward, average over ranks, clip, step; lr: one rate, or one per parameter group."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.average_gradients(parameters)
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    rates = lr if isinstance(lr, list) else [lr] * len(optimizer.param_groups)
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    optimizer.step()


def run_stage(stage, run, stop_at=None):
    """The loop every stage shares: resume, train, checkpoint. A stage provides `name`, `steps`, `resume_file`,
    `modules` (saved and resumed), `train_step(step) -> dict of losses` and `finish()`, which writes the released
    checkpoint. Returns True when the stage is complete."""
    resume_path, start = run.path(stage.resume_file), 0
    made_by = {"preset": stage.preset_name, "seed": run.seed}       # a resume file belongs to one run
    if os.path.exists(resume_path):
        checkpoint = load_checkpoint(resume_path)
        differs = [f"{key} {checkpoint.get(key)!r} (this run: {value!r})" for key, value in made_by.items()
                   if checkpoint.get(key) != value]
        if differs:
            raise SystemExit(f"{resume_path} belongs to another run: {', '.join(differs)}. Pass the same --preset, "
                             f"--set and --seed to resume it, or delete it to start {stage.name} over.")
        for name, module in stage.modules.items():
            module.load_state_dict(checkpoint[name])
        start, stage.log = checkpoint["step"], checkpoint["log"]
        if run.rank == 0:
            print(f"{stage.name}: resuming from step {start} ({resume_path})")
    end = stage.steps if stop_at is None else min(stop_at, stage.steps)
    bar = tqdm(range(start, end), desc=stage.name, disable=run.rank != 0, initial=start, total=stage.steps)
    started = time.time()
    for step in bar:
        losses = stage.train_step(step)
        stage.log.append({"step": step, **losses})
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
        if run.rank == 0 and ((step + 1) % stage.preset.save_every == 0 or step + 1 == end):
            save_checkpoint(resume_path, {"format": CHECKPOINT_FORMAT, "step": step + 1, "log": stage.log, **made_by,
                                          **{name: m.state_dict() for name, m in stage.modules.items()}})
    if run.rank == 0:
        print(f"{stage.name}: {end - start} steps in {time.time() - started:.0f} s")
    if end < stage.steps:
        return False                                               # stopped early; resume later
    run.check_in_sync(stage.modules["model"])
    if run.rank == 0:
        stage.finish()
        os.remove(resume_path)
    return True


# ---- the command line ----------------------------------------------------------------------------

def preset_from(spec: str) -> Preset:
    """A preset from its spec: a name in PRESETS, then any FIELD=VALUE settings (train.py's --set),
    e.g. "tiny teacher_steps=8000 model.dim=256 world.occluder=14". Checkpoints keep the spec."""
    name, *settings = spec.split()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    defaults = {"model": {k: v for k, v in asdict(tv.VideoSSMConfig()).items() if k not in ("causal", "mode")},
                "world": {k: v for k, v in asdict(World()).items() if k != "size"},
                "": {k: v for k, v in vars(preset).items() if not isinstance(v, (dict, tuple))}}
    changes = {"model": dict(preset.model), "world": dict(preset.world), "": {}}
    for setting in settings:
        key, equals, text = setting.partition("=")
        part, _, key = key.rpartition(".")                  # "model.dim" -> "model", "dim"
        if not equals or key not in defaults.get(part, {}):
            where = {"model": "the model (VideoSSMConfig)", "world": "the world (World)"}.get(
                part, "the preset (model.FIELD and world.FIELD for the model's and the world's)")
            raise ValueError(f"--set {setting}: expected FIELD=VALUE, FIELD a field of {where}: "
                             f"{', '.join(defaults.get(part, defaults['']))}")
        kind = type(defaults[part][key])                    # each value converted to its default's type
        try:
            changes[part][key] = {"true": True, "false": False}[text.lower()] if kind is bool else kind(text)
        except (KeyError, ValueError):
            raise ValueError(f"--set {setting}: {text!r} is not a valid {kind.__name__}") from None
    try:
        return replace(preset, model=changes["model"], world=changes["world"], **changes[""])
    except ValueError as error:                             # the dataclasses' own checks
        raise ValueError(f"--set: {error}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train tiny-videossm: stage 0 the teacher, stage 1 the causal "
                                     "student by ODE distillation, stage 2 the student by long self-rollouts with DMD, "
                                     "then its memory's recall of sprites that come back after a long absence. Each "
                                     "stage resumes from its last checkpoint and is skipped once it is released.")
    parser.add_argument("--preset", default="tiny", help=f"sizes and schedules: {', '.join(PRESETS)} (default tiny)")
    parser.add_argument("--set", default=[], action="append", metavar="FIELD=VALUE",
                        help="change one field of the preset (repeatable): e.g. --set teacher_steps=8000 "
                             "--set model.dim=256; pass the same settings to every stage of a run")
    parser.add_argument("--stage", default="all", choices=["0", "1", "2", "all"], help="which stage(s) to run")
    parser.add_argument("--mode", default="hybrid", choices=["hybrid", "sink", "window", "memory"],
                        help="the student's memory mode: hybrid (VideoSSM), sink (LongLive), window (Self-Forcing), "
                             "memory (state-space only)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda trains in bf16 autocast")
    parser.add_argument("--out", default="checkpoints", help="checkpoint folder (default checkpoints/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data and noise")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop each stage at this step, leaving a checkpoint to resume from")
    args = parser.parse_args(argv)
    if args.stop_at is not None and args.stop_at < 1:
        parser.error(f"--stop-at {args.stop_at}: a step number, at least 1")
    if not 0 <= args.seed < 2 ** 32:
        parser.error(f"--seed {args.seed}: use a number from 0 to {2 ** 32 - 1}")
    spec = " ".join([args.preset, *args.set])           # what the checkpoints record as their preset
    try:
        preset = preset_from(spec)
    except ValueError as error:
        parser.error(str(error))
    run = Run(args.device, args.out, args.seed)
    # stage 2 ends with the memory's recall phase when the student has a memory and the preset asks
    dmd_file = "student_dmd.pt" if preset.memory_steps and tv.uses_memory(args.mode) else "student.pt"
    stages = [("0", "teacher.pt", lambda: Teacher(run, preset, spec)),
              ("1", "student_stage1.pt", lambda: ODEDistillation(run, preset, spec, args.mode)),
              ("2", dmd_file, lambda: SelfRolloutDMD(run, preset, spec, dmd_file))]
    if dmd_file != "student.pt":
        stages.append(("2", "student.pt", lambda: MemoryRecall(run, preset, spec, dmd_file)))
    for number, released, make in [stage for stage in stages if args.stage in ("all", stage[0])]:
        done = os.path.exists(run.path(released))
        if done or number == "2" and os.path.exists(run.path("student.pt")):   # the phase released: DMD is done
            if run.rank == 0 and done:
                print(f"stage {number}: {run.path(released)} exists; delete it to train this stage again")
            continue
        started = time.time()
        if not run_stage(make(), run, args.stop_at):
            break                                          # stopped at --stop-at: the same command resumes
        if run.rank == 0:
            print(f"stage {number}: {released} in {(time.time() - started) / 60:.1f} min (setup included)")
    if run.distributed:
        dist.barrier()                   # every rank done talking before any tears its connections down
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
