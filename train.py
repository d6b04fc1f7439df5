"""
Training for tiny-videossm, read top to bottom: the presets, then the stages, each as its data, its
loss and its update: stage 0 the teacher, stage 1 causal ODE distillation, stage 2 self-rollout DMD
and its last phase, the memory's recall. The harness they share (devices, checkpoints, the loop) and
the command line come last. Imports tiny_videossm.py and world.py (the data); the measures of how well
it all works live in measure/. Shape letters: docs/notation.md.

    python train.py --preset tiny      every stage into runs/tiny/ (resumable: the same command goes on)
"""

import argparse
import contextlib
import copy
import fcntl
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist
from tqdm import tqdm

import tiny_videossm as tv
from world import SPRITE_RGB, VOCAB, World, parse_caption, random_caption, sprite_mask, sprite_returns, with_curtains

# ---- presets: every size and schedule of a run ---------------------------------------------------
#   python train.py --preset tiny [--stage 0] [--set teacher_steps=8000 --out runs/longer]   (--help: the rest)

@dataclass
class Preset:
    model: dict = field(default_factory=dict)   # VideoSSMConfig fields
    world: dict = field(default_factory=dict)   # World fields (not size, which is the model's frame_size)
    clip_frames: int = 12         # the teacher's clip length; stage 2's DMD window too
    timestep_shift: float = 3.0   # Wan's timestep shift of sampling and distillation: leans to high noise
    denoising_steps: int = 4      # the student's few steps
    guidance_scale: float = 1.5   # classifier-free guidance of the teacher (ODE pairs, real score)
    save_every: int = 100         # steps between resumable checkpoints
    weight_decay: float = 0.01    # AdamW's, on matrices only (adamw)
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
    memory_worlds: tuple = ()     # the worlds those clips come from, World fields each (none: with_curtains); a family
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


ZERO_ALLOWED = {"weight_decay", "image_batch", "warmup", "critic_warmup", "sprite_weight", "dmd_regression", "guidance_scale",
                "text_dropout", "switch_probability", "ema_decay", "memory_steps", "memory_rest_lr", "memory_anchor",
                "memory_free_anchor"}


# the shipped models' recipe (its time on a 2-core CPU: README)
TINY = Preset(model=dict(frame_size=32, patch_size=4, dim=128, n_heads=4, n_layers=4, ffn_dim=512, text_dim=64,
                         freq_dim=64, chunk_frames=3, sink_chunks=1, window_chunks=2, router_horizon=48),
              compile=True, teacher_steps=5000, teacher_batch=4, image_batch=48, warmup=200, sprite_weight=1.0,
              ode_clips=192, ode_steps=16, student_steps=250, student_batch=4, dmd_steps=160, dmd_batch=2,
              memory_steps=400, memory_rest_lr=1e-4, save_every=25,
              memory_worlds=(dict(curtains=4), dict(curtains=6), dict(curtains=8), dict(arena_scale=2.0),
                             dict(arena_scale=2.0, curtains=3), dict(arena_scale=1.75, curtains=6),
                             dict(curtains=4, min_speed=1.0, max_speed=2.0)))

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
    """Flow matching's squared error, not averaged, (B, F, C, H, W): the velocity predicted at x_s against eps - x0.
    The teacher learns it on world clips, the critic (stage 2) on the student's samples."""
    with autocast():
        velocity = model(tv.add_noise(x0, noise, sigma), 1000 * sigma, text)
    return (velocity.float() - tv.velocity_target(x0, noise)).square()


def bin_losses(sigma, per_sample_loss, bins=4):
    """The mean loss in `bins` equal bins of the noise level, logged as s0 (s near 0) to s{bins - 1} (s near 1)."""
    index = (sigma * bins).long().clamp(max=bins - 1)
    return {f"s{b}": per_sample_loss[index == b].mean().item() for b in range(bins) if (index == b).any()}


class Teacher:
    """Stage 0. Bidirectional DiT + text encoder, flow matching on world clips (and between them on batches of
    single frames, as the preset says), text dropout for CFG, EMA."""
    name, resume_file = "stage 0 (teacher)", "teacher.resume.pt"

    def __init__(self, run):
        preset = run.preset
        self.run, self.preset, self.log, self.steps = run, preset, [], preset.teacher_steps
        cfg = tv.VideoSSMConfig(**preset.model, causal=False)
        with run.seeded(0):
            self.model = tv.VideoDiT(cfg).to(run.device)
            self.text_encoder = tv.TextEncoder(VOCAB, cfg.text_dim).to(run.device)
        self.trained_parameters = [*self.model.parameters(), *self.text_encoder.parameters()]
        self.optimizer = adamw([self.trained_parameters], (0.9, 0.99), preset.weight_decay)
        self.ema = EMA(self.model, preset.ema_decay)
        self.ema_text = EMA(self.text_encoder, preset.ema_decay)
        # the forward train_step calls, compiled where it can be (the same weights; on a CPU inductor needs a C++
        # compiler), one graph per shape (clips, images)
        compiler = run.device.type == "cuda" or any(shutil.which(c) for c in ("g++", "c++", "clang++"))
        if preset.compile and not compiler:
            print("stage 0: no C++ compiler (g++, c++ or clang++): the teacher trains without torch.compile (slower)")
        self.train_forward = torch.compile(self.model, dynamic=False) if preset.compile and compiler else self.model
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
        release(self.run, "teacher.pt", 0, self.ema.module, self.ema_text.module, self.log)


def guided_velocity(teacher, x, timestep, text, empty, guidance_scale):
    """Classifier-free guidance, both forwards in one batch; `empty` is the empty prompt's text features."""
    conditional, unconditional = teacher(torch.cat([x, x]), torch.cat([timestep, timestep]),
                                         torch.cat([text, empty])).float().chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


@torch.no_grad()
def teacher_sample(teacher, text_encoder, captions, frames, steps, timestep_shift, guidance_scale, generator,
                   keep_sigmas=()):
    """Euler steps of the teacher's ODE with CFG, s = 1 to 0: the clean clips (B, F, C, H, W) and the states at
    `keep_sigmas` (stage 1's pairs)."""
    device = next(teacher.parameters()).device
    cfg = teacher.cfg
    B = len(captions)
    # the grid: `steps` shifted levels, with the levels to keep spliced in exactly
    grid = sorted({float(tv.shift_sigma(torch.tensor(1 - i / steps), timestep_shift)) for i in range(steps)}
                  | {float(s) for s in keep_sigmas} | {0.0}, reverse=True)
    text = text_encoder(captions).to(device)
    empty = text_encoder([""] * B).to(device)
    x = torch.randn((B, frames, cfg.channels, cfg.frame_size, cfg.frame_size), generator=generator).to(device)
    kept = {}
    for s, s_next in zip(grid, grid[1:]):
        if s in keep_sigmas:
            kept[s] = x.clone()
        timestep = torch.full((B,), 1000 * s, device=device)
        x = x + (s_next - s) * guided_velocity(teacher, x, timestep, text, empty, guidance_scale)  # Euler, s decreasing
    return x, [kept[s] for s in keep_sigmas]


# ---- stage 1: causal ODE distillation ------------------------------------------------------------

def student_from_teacher(teacher, mode):
    """(D9) The causal student starts as the teacher, plus memory weights whose path adds exactly 0 (W_gate zero)."""
    cfg = tv.VideoSSMConfig(**{**asdict(teacher.cfg), "causal": True, "mode": mode})
    student = tv.VideoDiT(cfg).to(next(teacher.parameters()).device)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(".self_attn." in name for name in missing), (missing, unexpected)
    return student


def ode_pairs(run, teacher, text_encoder, sigmas):
    """Teacher trajectories for random captions at the student's levels `sigmas`, and their clean ends; cached."""
    path = run.path("ode_pairs.pt")
    preset = run.preset
    teacher_sum = float(sum(p.detach().double().sum() for p in teacher.parameters()))   # a retrained teacher differs
    made_by = [run.made_by, teacher_sum]
    if os.path.exists(path):
        try:
            pairs = torch.load(path, weights_only=True)
            if pairs.get("made_by") == made_by:
                return pairs
            print(f"{path} was made by another teacher or preset; making new pairs")
        except Exception as error:                       # a cache: a broken one is made again
            print(f"{path} cannot be read ({type(error).__name__}); making new pairs")
    batch = 16
    noisy, clean, captions = [], [], []
    for start in tqdm(range(0, preset.ode_clips, batch), desc="teacher ODE pairs", disable=run.rank != 0):
        gen = torch.Generator().manual_seed(run.seed * 7919 + start)
        names = [random_caption(gen) for _ in range(min(batch, preset.ode_clips - start))]
        with run.autocast():
            x0, kept = teacher_sample(teacher, text_encoder, names, preset.clip_frames, preset.ode_steps,
                                      preset.timestep_shift, preset.guidance_scale, gen, keep_sigmas=sigmas)
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

    def __init__(self, run):
        preset = run.preset
        self.run, self.preset, self.log, self.steps = run, preset, [], preset.student_steps
        teacher, self.text_encoder = run.load("teacher.pt", build=True)
        self.sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.timestep_shift)
        self.pairs = ode_pairs(run, teacher, self.text_encoder, self.sigmas)
        with run.seeded(1):                                # the memory's new weights
            self.model = student_from_teacher(teacher, run.mode).train()
        self.optimizer = adamw([list(self.model.parameters())], (0.9, 0.99), preset.weight_decay)
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
        release(self.run, "student_stage1.pt", 1, self.model, self.text_encoder, self.log)


# ---- stage 2: long self-rollout with DMD (E11) ---------------------------------------------------

def dmd_loss(x, x0_real, x0_fake):
    """(E11) Distribution matching distillation: its gradient in the generated clip x is proportional to
    (x0_fake - x0_real) / mean|x - x0_real| per clip, away from what the critic thinks generated clips look
    like, towards what the teacher thinks real ones look like; a surrogate MSE to a detached target carries it."""
    normaliser = (x - x0_real).abs().flatten(1).mean(1).clamp_min(1e-6)                # (B,)
    direction = (x0_fake - x0_real) / normaliser.view(-1, *[1] * (x.dim() - 1))
    target = (x - direction).detach()
    return 0.5 * (x - target).square().flatten(1).sum(1).mean() / x[0].numel()


class SelfRolloutDMD:
    """Stage 2. The student streams a long video with its own cache (the sampler's code); a teacher-length window
    of it gets the DMD loss: real score the frozen teacher with CFG, fake score a critic trained on the student's
    samples. As in the DMD paper a regression anchors it, stage 1's loss on the teacher's pairs (`dmd_regression`)."""
    name, resume_file = "stage 2 (self-rollout DMD)", "student.resume.pt"

    def __init__(self, run, released="student.pt"):
        preset = run.preset
        self.run, self.preset, self.log, self.steps, self.released = run, preset, [], preset.dmd_steps, released
        self.teacher, self.text_encoder = run.load("teacher.pt", build=True)
        self.teacher.requires_grad_(False)
        self.critic = copy.deepcopy(self.teacher).requires_grad_(True).train()
        self.model = run.load("student_stage1.pt", build=True)[0].train().requires_grad_(True)
        self.optimizer = adamw([list(self.model.parameters())], (0.0, 0.99), preset.weight_decay)
        self.critic_optimizer = adamw([list(self.critic.parameters())], (0.0, 0.99), preset.weight_decay)
        self.modules = {"model": self.model, "optimizer": self.optimizer,
                        "critic": self.critic, "critic_optimizer": self.critic_optimizer}
        self.sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.timestep_shift)
        self.pairs = (ode_pairs(run, self.teacher, self.text_encoder, self.sigmas)
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
            velocity_real = guided_velocity(self.teacher, x_s, 1000 * sigma, text, empty, self.preset.guidance_scale)
            velocity_fake = self.critic(x_s, 1000 * sigma, text).float()
        return tv.x0_from_velocity(x_s, velocity_real, sigma), tv.x0_from_velocity(x_s, velocity_fake, sigma)

    def critic_loss(self, x, caption, gen):
        """The critic's flow matching on the student's samples x, at the sampler's shifted levels, where they live."""
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        sigma = tv.shift_sigma(torch.rand(x.shape[0], generator=gen), self.preset.timestep_shift).to(x.device)
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
        release(self.run, self.released, 2, self.model, self.text_encoder, self.log)


# ---- stage 2, last phase: the memory asked for what left the window (ours) -------------------------

def paired_chunks(model, frozen, caches, num_chunks, exit_step, sigmas, gen):
    """`num_chunks` chunks of the trained student's chain to `exit_step` (in the graph) and the frozen student's
    predictions from the same inputs, (B, F, C, H, W) each. Both caches get the trained student's chunks, its clean
    pass in the graph so that the memory's write path learns (D11)."""
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
    """Where the frozen student draws a sprite, each pixel's cross-entropy over the sprite colours, the true one the
    target; elsewhere the squared difference to the frozen student. x0, frozen_x0: (1, F, C, H, W). Returns both
    terms and whether the sprite's pixels, summed, pick the true colour."""
    sprite = sprite_mask(frozen_x0, background)                                           # (1, F, 1, H, W)
    logits = -(x0.movedim(2, -1)[..., None, :] - SPRITE_RGB.to(x0.device)).square().sum(-1)  # (1, F, H, W, 4)
    log_p, where = torch.log_softmax(logits, -1), sprite[:, :, 0]                         # where: (1, F, H, W)
    cross_entropy = -(log_p[..., colour] * where).sum() / where.sum().clamp_min(1.0)
    outside = ((x0 - frozen_x0).square() * (1 - sprite)).mean()
    picks_true_colour = bool((log_p.exp() * where[..., None]).flatten(0, -2).sum(0).argmax() == colour)
    return cross_entropy, outside, picks_true_colour


class MemoryRecall:
    """Stage 2's last phase (ours, not the paper's): after ground truth in which a sprite left sight for longer
    than the sink and the window hold, does the sprite the student brings back have its colour? The memory trains
    at `memory_lr`, the rest at `memory_rest_lr`, anchored to the frozen stage-2 student off the sprite
    (`memory_anchor`) and on a free rollout (`memory_free_anchor`)."""
    name, resume_file = "stage 2 (memory recall)", "student_memory.resume.pt"

    def __init__(self, run, dmd_file):
        preset = run.preset
        self.run, self.preset, self.log, self.steps = run, preset, [], preset.memory_steps
        self.model, self.text_encoder = run.load(dmd_file, build=True)
        self.frozen = run.load(dmd_file, build=True)[0].requires_grad_(False)
        self.memory = [p for name, p in self.model.named_parameters() if ".memory." in name]
        if not tv.uses_memory(self.model.cfg.mode):
            raise SystemExit(f"{run.path(dmd_file)} has no memory to train (mode {self.model.cfg.mode}): set "
                             f"memory_steps=0 for sink and window students")
        rest = [p for name, p in self.model.named_parameters() if ".memory." not in name] if preset.memory_rest_lr else []
        self.model.requires_grad_(False).train()
        self.trained = self.memory + rest
        for p in self.trained:
            p.requires_grad_(True)
        self.optimizer = adamw([self.memory, rest], (0.9, 0.99), preset.weight_decay)
        self.modules = {"model": self.model, "optimizer": self.optimizer}
        size = self.model.cfg.frame_size
        self.worlds = [World(size, **w) for w in preset.memory_worlds] or [with_curtains(World(size, **preset.world))]
        self.sigmas = tv.denoising_sigmas(preset.denoising_steps, preset.timestep_shift)

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
                        tv.teacher_force(student, self.text_encoder, cache, clip.video[:, :r * cf].to(self.run.device),
                                         clip.prompts())
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
        release(self.run, "student.pt", 2, self.model, self.text_encoder, self.log)


# ---- the harness: devices, data parallel, checkpoints, the loop every stage shares ----------------

class Run:
    """Where a run happens and what makes it: device, autocast, data-parallel rank, folder, and the preset, settings
    and seed its files record. Every rank builds the same weights and averages its gradients: the ranks stay equal."""

    def __init__(self, device, out_dir, seed, spec="tiny", mode="hybrid"):
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
        self.preset = preset_from(spec)
        self.made_by, self.mode = {"preset": spec, "seed": seed, "recipe": asdict(self.preset)}, mode
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
            take_folder(out_dir)
            remove_stale_temporary_files(out_dir)

    def autocast(self):
        return torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda")

    def generator(self, *keys):
        """A fresh generator per (stage, step, rank, ...): no RNG state to save for an exact resume."""
        seed = self.seed
        for key in (*keys, self.rank):
            seed = (seed * 1_000_003 + key) % 2 ** 63
        return torch.Generator().manual_seed(seed)

    @contextlib.contextmanager
    def seeded(self, stage):
        """New weights drawn inside come from the stage's own seed (the same on every rank), whatever ran
        before in the process: a stage started on its own, or resumed, builds the same model."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + stage) % 2 ** 63)
            yield

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

    def load(self, name, build=False):
        """A checkpoint of this run's folder, or with build the model and text encoder it holds on the run's
        device; one clear message if it cannot be used."""
        try:
            checkpoint = tv.load_checkpoint(self.path(name))
            return [m.to(self.device) for m in tv.build(checkpoint, self.path(name))] if build else checkpoint
        except tv.CheckpointError as error:
            raise SystemExit(str(error)) from None


HELD = {}   # the folders this process holds: {path: the open lock file}


def take_folder(folder):
    """One run writes to a folder at a time: it holds an OS lock on FOLDER/run.lock (naming its process), which
    the OS drops when the process ends, however it ends."""
    path = os.path.realpath(os.path.join(folder, "run.lock"))
    if path in HELD:
        return
    file = open(path, "a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        raise SystemExit(f"{folder} is being written by another training run (process {file.read().strip()}): wait "
                         f"for it to finish, or pass --out with another folder") from None
    file.truncate(0)
    file.write(str(os.getpid()))
    file.flush()
    HELD[path] = file


def release_folder(folder):
    """The lock of take_folder, given back and its file removed."""
    file = HELD.pop(os.path.realpath(os.path.join(folder, "run.lock")), None)
    if file:
        os.remove(file.name)
        file.close()


def save_checkpoint(path, checkpoint):
    """Write atomically, a temporary file then a rename: a crash or a full disk leaves the old file as it was, and
    Ctrl-C during the write waits for the file to be whole (torch's archive writer cannot stop half-way)."""
    tmp, ctrl_c = f"{path}.{os.getpid()}.tmp", []
    wait_for_ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if wait_for_ctrl_c:
        signal.signal(signal.SIGINT, lambda *_: ctrl_c.append(True))
    try:
        with open(tmp, "wb") as file:                  # a file object: the archive's name inside is fixed
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())                    # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except OSError as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        kept = f"the last checkpoint, {path}, is kept as it was" if os.path.exists(path) else "nothing was written"
        raise SystemExit(f"cannot write {path}: {error.strerror or error}. {kept.capitalize()}; make room (or fix "
                         f"the folder) and run the same command again to go on from there.") from None
    finally:
        if wait_for_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if ctrl_c:
                raise KeyboardInterrupt


def remove_stale_temporary_files(folder):
    """Temporary files of saves that were killed (NAME.PID.tmp): with the folder taken, no save is under way."""
    for name in os.listdir(folder):
        parts = name.split(".")
        if len(parts) > 2 and parts[-1] == "tmp" and parts[-2].isdigit():
            os.remove(os.path.join(folder, name))


def release(run, name, stage, model, text_encoder, log):
    """The checkpoint sample.py reads (tv.CHECKPOINT_FORMAT): half-precision weights, sampling's values, what made it."""
    half = lambda module: {k: v.half() for k, v in module.state_dict().items()}
    sampling = {"denoising_steps": run.preset.denoising_steps, "timestep_shift": run.preset.timestep_shift}
    save_checkpoint(run.path(name), {"format": tv.CHECKPOINT_FORMAT, "stage": stage, "config": asdict(model.cfg),
                                     "vocab": text_encoder.vocab, "sampling": sampling, "made_by": run.made_by,
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


def adamw(parameter_groups, betas, weight_decay):
    """AdamW in which only matrices decay, as in nanoGPT: parameters of two dimensions or more (weights, embeddings,
    adaLN tables). Vectors never do: the memory's A_log and dt_bias (flash-linear-attention marks them so), the
    router, norms, biases. parameter_groups: one list of parameters per learning rate optimizer_step is given."""
    groups = [{"params": [p for p in group if (p.dim() >= 2) == matrices], "rate": i,
               "weight_decay": weight_decay if matrices else 0.0}
              for i, group in enumerate(parameter_groups) for matrices in (True, False)]
    return torch.optim.AdamW([group for group in groups if group["params"]], betas=betas)


def optimizer_step(run, optimizer, parameters, lr, loss):
    """backward, average over ranks, clip, step; lr: one rate, or a list of one per group given to adamw."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.average_gradients(parameters)
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    for group in optimizer.param_groups:
        group["lr"] = lr[group["rate"]] if isinstance(lr, list) else lr
    optimizer.step()


def describe(made_by):
    mode = f", mode {made_by['mode']!r}" if made_by.get("mode") else ""
    return f"preset {made_by.get('preset')!r}, seed {made_by.get('seed')}{mode}"


def check_made_by(path, theirs, ours):
    """A file of the run's folder (a release, or a resume file) made by another run, or by the same preset, settings,
    seed and mode under another version of train.py: one clear message, not a stage skipped or resumed into."""
    if theirs == ours:
        return
    if all(theirs.get(k) == ours[k] for k in ("preset", "seed", "mode")):
        raise SystemExit(f"{path} was made by {describe(theirs)} too, but by another version of train.py (other values "
                         f"of that preset): pass --out with a folder of its own for this run, or finish that one with "
                         f"the train.py that started it.")
    raise SystemExit(f"{path} was made by another run ({describe(theirs)}; this one: {describe(ours)}). Pass --out with "
                     f"a folder of its own for this run, or that run's --preset, --set, --seed and --mode to go on with it.")


def made_by_this_run(run, name, student=False):
    """Whether the run's folder holds the release `name`, made by this run; made by another, check_made_by says so."""
    if not os.path.exists(run.path(name)):
        return False
    checkpoint = run.load(name)
    mode = checkpoint.get("config", {}).get("mode") if student else None      # a student's mode is in its config
    check_made_by(run.path(name), {**checkpoint.get("made_by", {}), "mode": mode},
                  {**run.made_by, "mode": run.mode if student else None})
    return True


def log_entry(losses):
    """One step's log entry, its keys interned (pickle writes a string once per object): a resumed run's log saves
    to the same bytes as an uncut one's."""
    return {sys.intern(key): value for key, value in losses.items()}


def run_stage(stage, run, stop_at=None):
    """The loop every stage shares: resume, train, checkpoint; True when the stage is complete. A stage has `name`,
    `steps`, `resume_file`, `modules` (saved and resumed), `train_step(step) -> losses` and `finish()` (the release)."""
    resume_path, start = run.path(stage.resume_file), 0
    made_by = {**run.made_by, "mode": None if isinstance(stage, Teacher) else run.mode}   # a resume file: one run's
    if os.path.exists(resume_path):
        checkpoint = run.load(stage.resume_file)
        check_made_by(resume_path, checkpoint.get("made_by", {}), made_by)
        try:
            for name, module in stage.modules.items():
                module.load_state_dict(checkpoint[name])
        except (KeyError, ValueError, RuntimeError) as error:
            raise SystemExit(f"{resume_path} does not fit this code's {stage.name} ({type(error).__name__}): it was "
                             f"written by another version of train.py; pass --out with a new folder") from None
        start, stage.log = checkpoint["step"], [log_entry(entry) for entry in checkpoint["log"]]
        if run.rank == 0:
            print(f"{stage.name}: resuming from step {start} ({resume_path})")
    end = stage.steps if stop_at is None else min(stop_at, stage.steps)
    bar = tqdm(range(start, end), desc=stage.name, disable=run.rank != 0, initial=start, total=stage.steps)
    started = time.time()
    for step in bar:
        losses = stage.train_step(step)
        stage.log.append(log_entry({"step": step, **losses}))
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
        if run.rank == 0 and ((step + 1) % run.preset.save_every == 0 or step + 1 == end):
            save_checkpoint(resume_path, {"format": tv.CHECKPOINT_FORMAT, "step": step + 1, "log": stage.log,
                                          "made_by": made_by, **{n: m.state_dict() for n, m in stage.modules.items()}})
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
    """A preset from its spec, a name in PRESETS then --set's FIELD=VALUE: "tiny teacher_steps=8000 model.dim=256"."""
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


def train_stages(run, args, stages):
    """Each stage in turn: done if this run released it, else trained (or resumed) to its end or --stop-at."""
    for number, released, make in [stage for stage in stages if args.stage in ("all", stage[0])]:
        if made_by_this_run(run, released, student=number != "0"):
            if run.rank == 0:
                print(f"stage {number}: {run.path(released)} was made by this preset, settings and seed: done")
            continue
        if number == "2" and made_by_this_run(run, "student.pt", student=True):    # the phase released: DMD is done
            continue
        started = time.time()
        if not run_stage(make(), run, args.stop_at):
            break                                          # stopped at --stop-at: the same command resumes
        if run.rank == 0:
            print(f"stage {number}: {released} in {(time.time() - started) / 60:.1f} min (setup included)")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train tiny-videossm: stage 0 the teacher, stage 1 the causal "
                                     "student by ODE distillation, stage 2 the student by long self-rollouts with DMD, "
                                     "then its memory's recall of sprites that come back after a long absence. Each "
                                     "stage resumes from its last checkpoint, and a stage this run (the same preset, "
                                     "settings and seed) has released is done.")
    parser.add_argument("--preset", default="tiny", help=f"sizes and schedules: {', '.join(PRESETS)} (default tiny)")
    parser.add_argument("--set", default=[], action="append", metavar="FIELD=VALUE",
                        help="change one field of the preset (repeatable): e.g. --set teacher_steps=8000 "
                             "--set model.dim=256; pass the same settings to every stage of a run")
    parser.add_argument("--stage", default="all", choices=["0", "1", "2", "all"], help="which stage(s) to run")
    parser.add_argument("--mode", default="hybrid", choices=["hybrid", "sink", "window", "memory"],
                        help="the student's memory mode: hybrid (VideoSSM), sink (LongLive), window (Self-Forcing), "
                             "memory (state-space only)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda trains in bf16 autocast")
    parser.add_argument("--out", help="the run's folder (default runs/PRESET); checkpoints/ holds the shipped models")
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
        preset_from(spec)
    except ValueError as error:
        parser.error(str(error))
    run = Run(args.device, args.out or os.path.join("runs", args.preset), args.seed, spec, args.mode)
    if run.rank == 0:
        print(f"training into {run.out_dir}/ ({describe(run.made_by)}, mode {args.mode})")
    # stage 2 ends with the memory's recall phase when the student has a memory and the preset asks
    dmd_file = "student_dmd.pt" if run.preset.memory_steps and tv.uses_memory(args.mode) else "student.pt"
    stages = [("0", "teacher.pt", lambda: Teacher(run)),
              ("1", "student_stage1.pt", lambda: ODEDistillation(run)),
              ("2", dmd_file, lambda: SelfRolloutDMD(run, dmd_file))]
    if dmd_file != "student.pt":
        stages.append(("2", "student.pt", lambda: MemoryRecall(run, dmd_file)))
    try:
        train_stages(run, args, stages)
    except KeyboardInterrupt:            # Ctrl-C: a save under way is left whole or not at all (save_checkpoint)
        print(f"stopped by Ctrl-C: {run.out_dir}/ keeps each stage's last checkpoint; the same command goes on "
              f"from there", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        release_folder(run.out_dir)
    if run.distributed:
        dist.barrier()                   # every rank done talking before any tears its connections down
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
