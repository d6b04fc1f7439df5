"""
Training for tiny-videossm. This first part is the data and the yardstick.

The world. Every clip is a coloured background with one or two sprites gliding across it.
The sprites live in an arena twice as wide and tall as the camera's view and bounce off its
walls, so they leave the picture and come back later. The caption names the background
colour, the sprite shape and how many sprites there are ("two circles on blue"); it does NOT
name the sprites' colours. Those are drawn once per clip and never change, so a model that
paints a returning sprite in its old colour has remembered it: that is the long-range memory
VideoSSM is about. A clip can switch its caption at a given frame: the named attributes change,
the sprites keep their colours and their motion, which is what a prompt switch should do.

Everything is closed form and vectorised: a sprite's position at frame f is a triangle wave of
p0 + v f (elastic bounces without a time loop) and a frame is painted from signed distances,
so a clip of any length from any seed costs a few tensor operations.

    World(size=32).sample(batch_size, frames, seed, switch_at=None) -> Clips (video + truth)
    parse_caption(text) -> Caption      random_caption(generator) -> str      VOCAB
    read_attributes(frames) -> per frame background and sprite colour, read from pixels

The metrics. Model-free analogues of VBench's long-video dimensions, read from the pixels with
the world's palette: fidelity, subject and background consistency, dynamic degree and frozen
chunks, flicker, drift; `video_metrics` returns them all. Report consistency next to dynamics
always: a frozen video is perfectly consistent.

Glossary of dimension letters used in the shape comments:
    B   clips in the batch            F   frames            S   sprite slots (MAX_SPRITES)
    H   height, W   width             C   chunks            K   frames per chunk
    P   colours in the palette (backgrounds, then sprite colours)
Frames are float32 RGB in [-1, 1], laid out (B, F, 3, H, W).
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as nnf

# ---- the world --------------------------------------------------------------------------------

# Named by the caption. Muted, darkish tones so that the sprites stand out. RGB in [0, 1].
BACKGROUNDS = {"red": (0.45, 0.12, 0.12), "green": (0.12, 0.38, 0.16),
               "blue": (0.12, 0.16, 0.45), "purple": (0.33, 0.13, 0.40)}
SHAPES = ["square", "circle", "diamond"]
# Not named by the caption: each sprite draws one and keeps it for the whole clip (its identity).
SPRITE_COLOURS = {"white": (1.0, 1.0, 1.0), "yellow": (1.0, 0.85, 0.1),
                  "cyan": (0.1, 0.85, 1.0), "orange": (1.0, 0.5, 0.05)}
MAX_SPRITES = 2  # a clip has 1 or 2 sprites, as its caption says

BACKGROUND_NAMES = list(BACKGROUNDS)
BACKGROUND_RGB = torch.tensor(list(BACKGROUNDS.values())) * 2 - 1  # (4, 3) in [-1, 1]
SPRITE_RGB = torch.tensor(list(SPRITE_COLOURS.values())) * 2 - 1  # (4, 3) in [-1, 1]
PALETTE = torch.cat([BACKGROUND_RGB, SPRITE_RGB])  # (P, 3) every colour the world paints

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

    @property
    def visible(self) -> torch.Tensor:
        return self.visible_area >= 1.0  # (B, F, S) at least one pixel's worth in view


@dataclass
class World:
    """The procedural world: `World(size=32).sample(batch_size, frames, seed)` gives Clips."""
    size: int = 32            # frames are size x size pixels
    arena_scale: float = 1.5  # the arena's side in view sides; the view sits in its centre
    min_speed: float = 0.6    # sprite speed in pixels per frame, drawn uniformly in [min, max]
    max_speed: float = 1.5

    @property
    def sprite_half_size(self) -> float:
        return self.size / 8  # sprites are about a quarter of the view wide

    @property
    def centre_range(self) -> tuple[float, float]:
        """Where a sprite's centre can be on either axis, in view pixels: the walls it bounces off."""
        margin = (self.arena_scale - 1) * self.size / 2
        return -margin + self.sprite_half_size, self.size + margin - self.sprite_half_size

    def sample(self, batch_size: int, frames: int, seed: int, switch_at: int | None = None) -> Clips:
        """Draw `batch_size` clips of `frames` frames; the same seed gives bit-identical clips.

        switch_at: a frame index k (0 < k < frames) at which each clip's caption changes to a
        different shape and/or background; the count, the sprite colours and the motion go on.
        """
        if batch_size < 1 or frames < 1:
            raise ValueError(f"need at least one clip and one frame, got {batch_size} and {frames}")
        if switch_at is not None and not 0 < switch_at < frames:
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
        if switch_at is not None:
            # a step of 1 .. pairs-1 around all pairs never lands on the same pair
            pair = (shape * len(BACKGROUNDS) + background + caption_step) % pairs  # (B,)
            shape_per_frame[:, switch_at:] = (pair // len(BACKGROUNDS))[:, None]
            background_per_frame[:, switch_at:] = (pair % len(BACKGROUNDS))[:, None]

        present = torch.arange(S) < count[:, None]  # (B, S)
        video, visible_area = self.render(background_per_frame, shape_per_frame, colour, present, position)

        def caption_at(b: int, f: int) -> str:
            named = Caption(int(count[b]), int(shape_per_frame[b, f]), int(background_per_frame[b, f]))
            return named.text()

        # Two strings per clip at most, repeated: long clips stay cheap.
        before = switch_at if switch_at is not None else frames
        captions = [[caption_at(b, 0)] * before + [caption_at(b, frames - 1)] * (frames - before)
                    for b in range(B)]
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
        # video: (B, F, 3, H, W) from here on
        coverage = []  # each sprite's share of each pixel, after the sprites painted over it
        for s in range(MAX_SPRITES):
            a = alpha[:, :, s, None]  # (B, F, 1, H, W)
            video = video * (1 - a) + sprite_rgb[:, :, s] * a  # (B, F, 3, H, W)
            coverage = [c * (1 - a) for c in coverage] + [a]
        visible_area = torch.cat(coverage, 2).sum((-2, -1))  # (B, F, S)
        return video, visible_area


# ---- reading frames back: the world's palette as a measuring stick --------------------------

SPRITE_TOLERANCE = 0.3  # a pixel counts for a sprite colour only this close to it: soft edges,
                        # blends of two colours, would otherwise vote for a third


def _check_frames(frames: torch.Tensor, min_frames: int = 1) -> None:
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"expected frames of shape (B, F, 3, H, W), got {tuple(frames.shape)}")
    if frames.shape[1] < min_frames:
        raise ValueError(f"this needs at least {min_frames} frames, got {frames.shape[1]}")


def _chunked(x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """(B, F, ...) -> (B, C, K, ...) with C = F // K; an incomplete last chunk is left out."""
    if not 1 <= chunk_frames <= x.shape[1]:
        raise ValueError(f"chunk_frames={chunk_frames} must be between 1 and the {x.shape[1]} frames")
    chunks = x.shape[1] // chunk_frames
    return x[:, :chunks * chunk_frames].unflatten(1, (chunks, chunk_frames))


def _nearest_palette(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the nearest PALETTE colour: its index and its distance, both (B, F, H, W)."""
    pixels = frames.movedim(2, -1)  # (B, F, H, W, 3)
    distance = torch.cdist(pixels.reshape(-1, 3), PALETTE.to(frames))  # (B*F*H*W, P)
    distance, index = distance.reshape(*pixels.shape[:-1], -1).min(-1)  # (B, F, H, W)
    return index, distance


def _colour_votes(frames: torch.Tensor) -> torch.Tensor:
    """How many pixels of each frame vote for each palette colour: (B, F, P)."""
    index, distance = _nearest_palette(frames)  # (B, F, H, W)
    voting = (distance < SPRITE_TOLERANCE) | (index < len(BACKGROUNDS))  # (B, F, H, W)
    counts = torch.zeros(*frames.shape[:2], len(PALETTE), device=frames.device)  # (B, F, P)
    return counts.scatter_add_(2, index.flatten(2), voting.flatten(2).float())  # (B, F, P)


def _read_votes(votes: torch.Tensor, min_sprite_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes (..., P) -> the winning background index and sprite colour index (-1: none), (...)."""
    background = votes[..., :len(BACKGROUNDS)].argmax(-1)
    sprite_votes, sprite = votes[..., len(BACKGROUNDS):].max(-1)
    return background, torch.where(sprite_votes >= min_sprite_pixels, sprite, -1)


def read_attributes(frames: torch.Tensor, min_sprite_pixels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Read each frame's colours back from its pixels, no model involved.

    Args: frames: shape (B, F, 3, H, W) in [-1, 1].
    Returns background (B, F), the index into BACKGROUNDS most pixels are nearest to, and
    sprite (B, F), the index into SPRITE_COLOURS most sprite-coloured pixels show, or -1 when
    fewer than `min_sprite_pixels` pixels show any.
    """
    _check_frames(frames)
    return _read_votes(_colour_votes(frames), min_sprite_pixels)


# ---- metrics: model-free analogues of VBench's long-video dimensions (SPEC section 8) ---------

def fidelity(frames: torch.Tensor, sigma: float = 0.2) -> float:
    """Do the pixels stay on the world's palette? Mean of exp(-d^2 / sigma^2), d the distance to
    the nearest palette colour. In [0, 1], higher is better; ground truth loses a little on its
    soft edges."""
    _check_frames(frames)
    _, distance = _nearest_palette(frames)  # (B, F, H, W)
    return (-(distance / sigma) ** 2).exp().mean().item()


def subject_consistency(frames: torch.Tensor, chunk_frames: int = 3,
                        sprites: int | torch.Tensor = 1) -> float:
    """Do the sprites keep their colours? Each chunk showing a sprite is read for its dominant
    sprite colour; a clip scores the share of those chunks whose colour is one of its `sprites`
    most frequent ones (the identities; pass the count the caption names, an int or a (B,)
    tensor). In [0, 1], higher is better; a clip that never shows a sprite scores 1."""
    _check_frames(frames)
    votes = _chunked(_colour_votes(frames), chunk_frames).sum(2)  # (B, C, P)
    _, sprite = _read_votes(votes, min_sprite_pixels=4)  # (B, C)
    shown = nnf.one_hot(sprite + 1, len(SPRITE_COLOURS) + 1)[..., 1:]  # (B, C, 4) which colour, if any
    rank = shown.sum(1).argsort(1, descending=True).argsort(1)  # (B, 4) 0 = the most frequent colour
    identity = rank < torch.as_tensor(sprites, device=rank.device).reshape(-1, 1)  # (B, 4)
    consistent = (shown * identity[:, None]).sum((1, 2))  # (B,)
    chunks_with_sprite = shown.sum((1, 2))  # (B,)
    score = torch.where(chunks_with_sprite > 0, consistent / chunks_with_sprite.clamp(min=1), 1.0)  # (B,)
    return score.mean().item()


def background_consistency(frames: torch.Tensor, chunk_frames: int = 3, sigma: float = 0.25) -> float:
    """Does the background keep its colour? A chunk's background colour is its per-channel median
    (sprites cover a small part of the view); each chunk scores exp(-|c - c_first|^2 / sigma^2)
    against the first chunk (which scores 1). In [0, 1], higher is better."""
    _check_frames(frames)
    chunks = _chunked(frames, chunk_frames).transpose(2, 3).flatten(3)  # (B, C, 3, K*H*W)
    colour = chunks.median(-1).values  # (B, C, 3)
    distance_sq = ((colour - colour[:, :1]) ** 2).sum(-1)  # (B, C)
    return (-distance_sq / sigma ** 2).exp().mean().item()


def dynamic_degree(frames: torch.Tensor) -> float:
    """Motion per frame: mean |x_t - x_{t-1}| over pixels and channels. In [0, 2], 0 when frozen;
    one sprite crossing a 32x32 view at about 1 px/frame gives about 0.01-0.02."""
    _check_frames(frames, min_frames=2)
    return (frames[:, 1:] - frames[:, :-1]).abs().mean().item()


def frozen_fraction(frames: torch.Tensor, chunk_frames: int = 3, threshold: float = 1e-3) -> float:
    """Share of chunks with (almost) no motion inside them: mean |x_t - x_{t-1}| within the chunk
    below `threshold`. In [0, 1]; ground truth has frozen chunks too, while no sprite is in view."""
    _check_frames(frames)
    if chunk_frames < 2:
        raise ValueError(f"motion inside a chunk needs chunk_frames >= 2, got {chunk_frames}")
    chunks = _chunked(frames, chunk_frames)  # (B, C, K, 3, H, W)
    motion = (chunks[:, :, 1:] - chunks[:, :, :-1]).abs().mean((2, 3, 4, 5))  # (B, C)
    return (motion < threshold).float().mean().item()


def flicker(frames: torch.Tensor) -> float:
    """Temporal high-frequency noise: mean |x_t - (x_{t-1} + x_{t+1}) / 2|. Smooth motion keeps
    it small, frame-to-frame noise raises it. In [0, 2], lower is better."""
    _check_frames(frames, min_frames=3)
    return (frames[:, 1:-1] - (frames[:, :-2] + frames[:, 2:]) / 2).abs().mean().item()


def drift(frames: torch.Tensor, chunk_frames: int = 3) -> float:
    """How far each chunk's colour statistics (per-channel mean and std) wander from the first
    chunk's: mean absolute difference over chunks and statistics. >= 0, lower is better; sprites
    coming and going give ground truth a small drift."""
    _check_frames(frames)
    chunks = _chunked(frames, chunk_frames).transpose(2, 3).flatten(3)  # (B, C, 3, K*H*W)
    stats = torch.cat([chunks.mean(-1), chunks.std(-1)], -1)  # (B, C, 6)
    return (stats - stats[:, :1]).abs().mean().item()


def video_metrics(frames: torch.Tensor, chunk_frames: int = 3,
                  sprites: int | torch.Tensor = 1) -> dict[str, float]:
    """All the metrics above for frames (B, F, 3, H, W), each averaged over the batch."""
    return {
        "fidelity": fidelity(frames),
        "subject_consistency": subject_consistency(frames, chunk_frames, sprites),
        "background_consistency": background_consistency(frames, chunk_frames),
        "dynamic_degree": dynamic_degree(frames),
        "frozen_fraction": frozen_fraction(frames, chunk_frames),
        "flicker": flicker(frames),
        "drift": drift(frames, chunk_frames),
    }


# ---- training stages follow ----
