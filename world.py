"""
The world: the procedural videos every stage trains on and every measure reads, with their ground
truth. Imports torch only; train.py, sample.py and measure/ import it, as nanoGPT keeps its data apart.

Every clip is a coloured background with one or two sprites gliding across it, in an arena larger than
the camera's view (World.arena_scale): they bounce off its walls, leave the picture and come back. The
caption names the background colour, the sprite shape and how many sprites there are ("two circles on
blue"), NOT the sprites' colours: those are drawn once per clip and never change, so a model that paints
a returning sprite in its old colour has remembered it, the long-range memory VideoSSM is about. All
closed form and vectorised: a clip of any length costs a few tensor ops.

    World(size=32).sample(batch_size, frames, seed, switch_at=None) -> Clips (video + truth)
    parse_caption(text) -> Caption      random_caption(generator) -> str      VOCAB, GRAMMAR
    sprite_mask(frames, background)     where frames show a sprite
    sprite_returns(world, cfg, ...)     clips in which a sprite leaves sight for longer than the sink and
                                        the window hold, and comes back: the recall question's ground truth

Shape letters are docs/notation.md's: B clips, F frames, S sprite slots (MAX_SPRITES), C colour
channels, H, W height and width; frames are float32 RGB in [-1, 1], laid out (B, F, C, H, W).
"""

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

# Named by the caption. Muted, darkish tones so that the sprites stand out. RGB in [0, 1].
BACKGROUNDS = {"red": (0.45, 0.12, 0.12), "green": (0.12, 0.38, 0.16),
               "blue": (0.12, 0.16, 0.45), "purple": (0.33, 0.13, 0.40)}
SHAPES = ["square", "circle", "diamond"]
# Not named by the caption: each sprite draws one and keeps it for the whole clip (its identity).
SPRITE_COLOURS = {"white": (1.0, 1.0, 1.0), "yellow": (1.0, 0.85, 0.1),
                  "cyan": (0.1, 0.85, 1.0), "orange": (1.0, 0.5, 0.05)}
MAX_SPRITES = 2  # a clip has 1 or 2 sprites, as its caption says
CURTAIN_RGB = torch.tensor([0.55, 0.55, 0.55]) * 2 - 1  # the grey curtains sprites pass behind (World.curtains)

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
    video: torch.Tensor          # (B, F, C, H, W) RGB in [-1, 1]
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
    curtains: int = 0         # width in pixels of the grey curtains at the view's left and right edges (0: none)

    def __post_init__(self):
        if not (0 <= 2 * self.curtains < self.size and 0 < self.min_speed <= self.max_speed and self.arena_scale >= 1):
            raise ValueError(f"World needs 0 <= curtains < size / 2 ({self.size / 2:g}), 0 < min_speed <= max_speed and "
                             f"arena_scale >= 1; got {self.curtains}, {self.min_speed}, {self.max_speed}, "
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
        Returns the video (B, F, C, H, W) and each sprite's visible area in pixels (B, F, S).
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
        for slot in range(MAX_SPRITES):
            a = alpha[:, :, slot, None]  # (B, F, 1, H, W)
            video = video * (1 - a) + sprite_rgb[:, :, slot] * a  # (B, F, C, H, W)
            coverage = [c * (1 - a) for c in coverage] + [a]
        column = torch.arange(self.size)  # the curtains, painted last (in front): 1 on the columns they cover
        band = ((column < self.curtains) | (column >= self.size - self.curtains)).float()  # (W,)
        video = video * (1 - band) + CURTAIN_RGB[:, None, None] * band  # (B, F, C, H, W)
        visible_area = (torch.cat(coverage, 2) * (1 - band)).sum((-2, -1))  # (B, F, S)
        return video, visible_area


def sprite_mask(frames: torch.Tensor, background) -> torch.Tensor:
    """Where frames show a sprite: 1.0 where a pixel is more than 0.5 from the background colour
    (`background` an index into BACKGROUNDS, or one per frame, (B, F)) and from the curtains' grey, else
    0.0; shape (B, F, 1, H, W). On clean frames: a sprite, or most of one on its soft edge."""
    away = lambda rgb: (frames - rgb.to(frames.device)[..., None, None]).square().sum(2, keepdim=True) > 0.25
    return (away(BACKGROUND_RGB[background]) & away(CURTAIN_RGB)).float()


# ---- sprites that come back: the recall question's ground truth ---------------------------------
# `cfg` below is anything with chunk_frames, sink_chunks and window_chunks (the model's VideoSSMConfig).

def with_curtains(world: World) -> World:
    """The world with 4-pixel curtains if it has none: sprites hide behind them longer than
    the sink and the window can bridge, then come back. The memory's phase and the recall probe use it."""
    return world if world.curtains else replace(world, curtains=4)


class Return(NamedTuple):
    """A ground-truth clip in which a sprite leaves sight for longer than the sink and the window hold, and
    comes back: then only the memory can tell its colour. The last three fields are the recall probe's."""
    video: torch.Tensor      # (1, F, C, H, W)
    caption: str
    colour: int              # index into SPRITE_COLOURS
    context_chunks: int      # chunks of ground truth to feed: the last window_chunks of them show none of it
    back: int                # the frame in which a pixel of it is in sight again
    clearly_back: int        # the frame in which it is clearly back (8 pixels)
    switch: int = 0          # the chunk from which the caption is new_caption (0: none); the sprite is away then
    new_caption: str = ""
    other: int = -1          # the colour of a second sprite that stays in sight (-1: the clip has one sprite)

    def prompts(self) -> dict:
        """{chunk: caption}, as tiny_videossm.generate and teacher_force take them."""
        return {0: self.caption, **({self.switch: self.new_caption} if self.switch else {})}


def sprite_absence(area: torch.Tensor, cfg):
    """From one sprite's visible pixels per frame, area (F,): (context_chunks, back, clearly_back, hidden_at) as
    in Return, hidden_at the frame it leaves sight, if it is out of sight in the sink's frames, seen clearly,
    then hidden until the window holds none of it, and clearly back at least four chunks before the end;
    else None."""
    cf, frames, area = cfg.chunk_frames, len(area), area.tolist()
    seen, hidden = [a >= 8 for a in area], [a < 1 for a in area]    # clearly; not one pixel in sight
    if any(a >= 1 for a in area[:cfg.sink_chunks * cf]) or True not in seen:
        return None
    first = seen.index(True)
    hidden_at = hidden.index(True, first) if True in hidden[first:] else frames
    back = hidden.index(False, hidden_at) if False in hidden[hidden_at:] else frames
    clearly_back = seen.index(True, back) if True in seen[back:] else frames
    context_chunks = math.ceil(hidden_at / cf) + cfg.window_chunks   # the first chunk after the window emptied
    fits = context_chunks * cf <= back and clearly_back <= frames - 4 * cf
    return (context_chunks, back, clearly_back, hidden_at) if fits else None


def sprite_returns(world: World, cfg, count: int, frames: int, seed: int, switch=False, other=False) -> list:
    """Up to `count` Returns among one-sprite clips of `frames` frames, searched from `seed`.
    switch: the caption changes (World.sample's switch_at) at a chunk in the middle of the absence, before the
    context ends. other: two-sprite clips instead, in which one sprite is away as sprite_absence asks while
    the other is clearly in sight in every frame of the context's last window."""
    cf, found = cfg.chunk_frames, []

    def hider(clips, b, sprites):                             # (the one of `sprites` that hides, its absence), or None
        for slot in sprites:
            span = sprite_absence(clips.visible_area[b, :, slot], cfg)
            if span is None:
                continue
            window = slice((span[0] - cfg.window_chunks) * cf, span[0] * cf)   # the context's last window
            if not other or (clips.visible_area[b, window, 1 - slot] >= 8).all():
                return slot, span
        return None

    for batch in range(64):                                   # a search: the clips are rare, not scarce
        clips = world.sample(32, frames, seed=seed + 1000 * batch)
        found_in = {b: hider(clips, b, (0, 1) if other else (0,))
                    for b in torch.nonzero(clips.count == (2 if other else 1)).flatten().tolist()}
        found_in, chunk = {b: h for b, h in found_in.items() if h}, [0] * 32
        if switch:                # the same clips, switched in the middle of each absence; the new shape covers
            for b, (_, (context_chunks, _, _, hidden_at)) in found_in.items():  # other pixels: look again
                chunk[b] = (math.ceil(hidden_at / cf) + context_chunks) // 2
            clips = world.sample(32, frames, seed=seed + 1000 * batch, switch_at=[max(1, c) * cf for c in chunk])
            found_in = {b: hider(clips, b, (slot,)) for b, (slot, _) in found_in.items()}   # the same sprite hides
        for b, h in found_in.items():
            if h:
                (slot, (context_chunks, back, clearly_back, _)), colour = h, clips.sprite_colour[b]
                found.append(Return(clips.video[b:b + 1], clips.captions[b][0], int(colour[slot]), context_chunks, back,
                                    clearly_back, chunk[b], clips.captions[b][-1] if switch else "",
                                    int(colour[1 - slot]) if other else -1))
                if len(found) == count:
                    return found
    return found
