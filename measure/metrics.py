"""
The measures: what a video shows, read from its pixels with the world's palette, no model involved.
Each says what it reads and what ground truth scores; the tests calibrate each on ground truth and on
controls (a frozen clip, added noise, a slow colour shift, a colour swap).

    read_attributes       per frame: the background and the sprite colour most pixels show
    VBench's long-video dimensions, model-free: fidelity, sprite_presence, subject_consistency,
        background_consistency, dynamic_degree, frozen_fraction, flicker, drift (video_metrics: all)
    does a model show the method: shape_match (the named shape), identity_kept (the first colour,
        late, against its first appearance), colour_after_exit (the colour after a sprite of the model's own
        leaves sight and returns: exit_colours; long_absences tells exits from blinks), recalled (the recall probe's
        verdict), prompt_match (the named background); hidden_spans: how long ground truth hides sprites

Read them together: a frozen video is perfectly consistent, and an empty background is faithful and
consistent. Each docstring says which edits of ground truth move the measure and which it is blind to by
design; the suite's perturbation bench asserts both, edit by edit. Frames are (B, F, C, H, W) in [-1, 1],
C = 3; shape letters are docs/notation.md's, P the palette's colours (PALETTE).
"""

import math

import torch
import torch.nn.functional as nnf

from world import BACKGROUND_RGB, BACKGROUNDS, CURTAIN_RGB, SPRITE_COLOURS, SPRITE_RGB, Clips

# ---- reading frames back: the world's palette as a measuring stick --------------------------

PALETTE = torch.cat([BACKGROUND_RGB, SPRITE_RGB, CURTAIN_RGB[None]])  # (P, 3) every colour the world paints

SPRITE_TOLERANCE = 0.3  # a pixel counts for a sprite colour only this close to it: soft edges,
                        # blends of two colours, would otherwise vote for a third


def _check_frames(frames: torch.Tensor, min_frames: int = 1) -> None:
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"expected frames of shape (B, F, C, H, W), got {tuple(frames.shape)}")
    if frames.shape[1] < min_frames:
        raise ValueError(f"this needs at least {min_frames} frames, got {frames.shape[1]}")


def _chunked(x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """(B, F, ...) -> (B, n, chunk_frames, ...), n = F // chunk_frames; an incomplete last chunk is left out."""
    if not 1 <= chunk_frames <= x.shape[1]:
        raise ValueError(f"chunk_frames={chunk_frames} must be between 1 and the {x.shape[1]} frames")
    chunks = x.shape[1] // chunk_frames
    return x[:, :chunks * chunk_frames].unflatten(1, (chunks, chunk_frames))


def nearest_palette(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel of frames (B, F, C, H, W), the nearest PALETTE colour: its index and its distance,
    both (B, F, H, W). Every measure reads pixels back this way."""
    pixels = frames.movedim(2, -1)  # (B, F, H, W, 3)
    distance = torch.cdist(pixels.reshape(-1, 3), PALETTE.to(frames))  # (B*F*H*W, P)
    distance, index = distance.reshape(*pixels.shape[:-1], -1).min(-1)  # (B, F, H, W)
    return index, distance


def _colour_votes(frames: torch.Tensor) -> torch.Tensor:
    """How many pixels of each frame vote for each palette colour: (B, F, P)."""
    index, distance = nearest_palette(frames)  # (B, F, H, W)
    voting = (distance < SPRITE_TOLERANCE) | (index < len(BACKGROUNDS))  # (B, F, H, W)
    counts = torch.zeros(*frames.shape[:2], len(PALETTE), device=frames.device)  # (B, F, P)
    return counts.scatter_add_(2, index.flatten(2), voting.flatten(2).float())  # (B, F, P)


def _read_votes(votes: torch.Tensor, min_sprite_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Votes (..., P) -> the winning background index and sprite colour index (-1: none), (...)."""
    background = votes[..., :len(BACKGROUNDS)].argmax(-1)
    sprite_votes, sprite = votes[..., len(BACKGROUNDS):len(BACKGROUNDS) + len(SPRITE_COLOURS)].max(-1)
    return background, torch.where(sprite_votes >= min_sprite_pixels, sprite, -1)


def read_attributes(frames: torch.Tensor, min_sprite_pixels: int = 4, leave_out: int = -1
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Read each frame's colours back from its pixels, no model involved.

    Args: frames: shape (B, F, C, H, W) in [-1, 1]; leave_out: a SPRITE_COLOURS index the sprite
    reading ignores (-1: none), as if those pixels showed no sprite.
    Returns background (B, F), the index into BACKGROUNDS most pixels are nearest to, and
    sprite (B, F), the index into SPRITE_COLOURS most sprite-coloured pixels show, or -1 when
    fewer than `min_sprite_pixels` pixels show any.
    """
    _check_frames(frames)
    votes = _colour_votes(frames)  # (B, F, P)
    if leave_out >= 0:
        votes[..., len(BACKGROUNDS) + leave_out] = 0
    return _read_votes(votes, min_sprite_pixels)


# ---- metrics: model-free analogues of VBench's long-video dimensions -------------------------

def fidelity(frames: torch.Tensor, sigma: float = 0.2) -> float:
    """Do the pixels stay on the world's palette? Mean of exp(-d^2 / sigma^2), d the distance to
    the nearest palette colour. In [0, 1], higher is better; ground truth loses a little on its
    soft edges. Moves: blends off the palette (a gradual recolouring, a faded sprite). Blind by design:
    a sprite missing, frozen, recoloured in another palette colour or drawn as another shape."""
    _check_frames(frames)
    _, distance = nearest_palette(frames)  # (B, F, H, W)
    return (-(distance / sigma) ** 2).exp().mean().item()


def sprite_presence(frames: torch.Tensor, min_sprite_pixels: int = 4) -> float:
    """Are there sprites at all? The share of frames in which some sprite colour covers at least
    `min_sprite_pixels` pixels. Ground truth is below 1 only while every sprite is out of view. A
    model that paints empty backgrounds scores 0 here, while its fidelity and consistency look
    perfect: read the other metrics next to this one. Moves: a sprite removed or faded off its colour
    (down), a frozen frame that shows one or a second sprite (up). Blind by design: which colour."""
    _, sprite = read_attributes(frames, min_sprite_pixels)  # (B, F), -1 = no sprite
    return (sprite >= 0).float().mean().item()


def subject_consistency(frames: torch.Tensor, chunk_frames: int = 3,
                        sprites: int | torch.Tensor = 1) -> float:
    """Do the sprites keep their colours? Each chunk showing a sprite is read for its dominant
    sprite colour; a clip scores the share of those chunks whose colour is one of its `sprites`
    most frequent ones (the identities; pass the count the caption names, an int or a (B,)
    tensor). In [0, 1], higher is better. Moves: a recolouring, sudden or gradual; a second sprite.
    Blind by design: a clip that never shows a sprite scores 1 (sprite_presence sees it); which colour
    comes first (identity_kept reads that)."""
    _check_frames(frames)
    votes = _chunked(_colour_votes(frames), chunk_frames).sum(2)  # (B, n, P)
    _, sprite = _read_votes(votes, min_sprite_pixels=4)  # (B, n)
    shown = nnf.one_hot(sprite + 1, len(SPRITE_COLOURS) + 1)[..., 1:]  # (B, n, 4) which colour, if any
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
    chunks = _chunked(frames, chunk_frames).transpose(2, 3).flatten(3)  # (B, n, 3, chunk_frames*H*W)
    colour = chunks.median(-1).values  # (B, n, 3)
    distance_sq = ((colour - colour[:, :1]) ** 2).sum(-1)  # (B, n)
    return (-distance_sq / sigma ** 2).exp().mean().item()


def dynamic_degree(frames: torch.Tensor) -> float:
    """Motion per frame: mean |x_t - x_{t-1}| over pixels and channels. In [0, 2], 0 when frozen;
    one sprite crossing a 32x32 view at about 1 px/frame gives about 0.01-0.02. Moves: a sprite frozen,
    removed or faded (down), a second one (up). Blind by design: colours, shapes."""
    _check_frames(frames, min_frames=2)
    return (frames[:, 1:] - frames[:, :-1]).abs().mean().item()


def frozen_fraction(frames: torch.Tensor, chunk_frames: int = 3, threshold: float = 1e-3) -> float:
    """Share of chunks with (almost) no motion inside them: mean |x_t - x_{t-1}| within the chunk
    below `threshold`. In [0, 1]; ground truth has frozen chunks too, while no sprite is in view."""
    _check_frames(frames)
    if chunk_frames < 2:
        raise ValueError(f"motion inside a chunk needs chunk_frames >= 2, got {chunk_frames}")
    chunks = _chunked(frames, chunk_frames)  # (B, n, chunk_frames, 3, H, W)
    motion = (chunks[:, :, 1:] - chunks[:, :, :-1]).abs().mean((2, 3, 4, 5))  # (B, n)
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
    chunks = _chunked(frames, chunk_frames).transpose(2, 3).flatten(3)  # (B, n, 3, chunk_frames*H*W)
    stats = torch.cat([chunks.mean(-1), chunks.std(-1)], -1)  # (B, n, 6)
    return (stats - stats[:, :1]).abs().mean().item()


def video_metrics(frames: torch.Tensor, chunk_frames: int = 3,
                  sprites: int | torch.Tensor = 1) -> dict[str, float]:
    """All the metrics above for frames (B, F, C, H, W), each averaged over the batch."""
    return {"fidelity": fidelity(frames), "sprite_presence": sprite_presence(frames),
            "subject_consistency": subject_consistency(frames, chunk_frames, sprites),
            "background_consistency": background_consistency(frames, chunk_frames),
            "dynamic_degree": dynamic_degree(frames), "frozen_fraction": frozen_fraction(frames, chunk_frames),
            "flicker": flicker(frames), "drift": drift(frames, chunk_frames)}


# ---- does a model show the method? Shapes, identity, recall, and hidden spans -------------------

def _sprite_pixels(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where frames (B, F, C, H, W) show each sprite colour, (B, F, 4, H, W) bool, and the curtains, (B, F, W)
    bool: the columns that are mostly grey (a sprite's soft edge can be greyish too), grown by a pixel."""
    _check_frames(frames)
    index, distance = nearest_palette(frames)  # (B, F, H, W)
    colours = torch.arange(len(SPRITE_COLOURS), device=frames.device) + len(BACKGROUNDS)
    mask = (index[:, :, None] == colours[:, None, None]) & (distance < SPRITE_TOLERANCE)[:, :, None]  # (B, F, 4, H, W)
    grey = (index == len(PALETTE) - 1) & (distance < SPRITE_TOLERANCE)  # (B, F, H, W)
    curtain = grey.float().mean(-2) > 0.75  # (B, F, W)
    curtain = nnf.max_pool1d(curtain.float().flatten(0, 1)[:, None], 3, 1, 1).view(curtain.shape) > 0
    return mask, curtain


def shape_readings(frames: torch.Tensor, min_pixels: int = 12) -> torch.Tensor:
    """Read each sprite's shape from its pixels: (B, F, 4) per sprite colour, an index into SHAPES, or
    -1 where no whole sprite of that colour is in sight. A sprite's pixels fill a share of their
    bounding box that tells the shapes apart whatever their size: a square about 1, a circle
    pi / 4, a diamond (a square on its tip) 1 / 2. A sprite touching the view's edge or the
    curtains, or much wider than tall, may be cut off, so it is not read."""
    mask, curtain = _sprite_pixels(frames)  # (B, F, 4, H, W), (B, F, W)
    near_band = (mask & curtain[:, :, None, None]).flatten(-2).any(-1)  # (B, F, 4)
    rows, columns = mask.any(-1), mask.any(-2)  # (B, F, 4, H), (B, F, 4, W)

    def extent(line):  # first and last occupied position along a line of booleans
        size = line.shape[-1]
        first = line.float().argmax(-1)
        return first, size - 1 - line.flip(-1).float().argmax(-1)
    (top, bottom), (left, right) = extent(rows), extent(columns)
    height, width = bottom - top + 1, right - left + 1  # (B, F, 4)
    fill = mask.flatten(-2).sum(-1) / (height * width)  # (B, F, 4)
    edge = (top == 0) | (left == 0) | (bottom == frames.shape[-2] - 1) | (right == frames.shape[-1] - 1)
    readable = ((mask.flatten(-2).sum(-1) >= min_pixels) & ~edge & ~near_band
                & (height <= 1.4 * width) & (width <= 1.4 * height))
    reading = torch.where(fill > 0.88, 0, torch.where(fill > 0.64, 1, 2))  # SHAPES: square, circle, diamond
    return torch.where(readable, reading, -1)


def shape_match(frames: torch.Tensor, shapes: torch.Tensor) -> float:
    """Is the named shape drawn? Of the sprites whose shape can be read (shape_readings), the share
    that read as the shape the caption names, `shapes` (B, F) an index into SHAPES. In [0, 1] (a
    blob for a square reads as a circle); NaN when no sprite can be read, as when none is drawn.
    Moves: another shape drawn. Blind by design: colour, motion."""
    readings = shape_readings(frames)  # (B, F, 4)
    readable = readings >= 0
    if not readable.any():
        return math.nan
    return (readings == shapes.to(readings.device)[..., None])[readable].float().mean().item()


def first_colour(track: torch.Tensor, longest: int = 12, gap: int = 3) -> int:
    """The colour of a sprite's first appearance: of a track of sprite readings (F,) (read_attributes,
    -1 = none), the colour read most often from the first frame that shows a sprite until it first leaves
    sight (an absence of `gap` frames), at most `longest` frames of it. -1 if no frame shows a sprite.
    Never reads past the first absence: a sprite that comes back in another colour has not kept its own."""
    shown = torch.nonzero(track >= 0).flatten().tolist()
    appearance = shown[:1]
    for frame in shown[1:longest]:
        if frame - appearance[-1] > gap:                  # `gap` frames or more without a sprite: it left
            break
        appearance.append(frame)
    return int(track[appearance].mode().values) if appearance else -1


def identity_kept(frames: torch.Tensor, reference: int = 12) -> torch.Tensor:
    """Does a sprite keep the colour it first appeared in? For clips of one sprite, per clip (B,): of the
    frames of the second half that show a sprite, the share in the colour of its first appearance in the
    first half (first_colour, at most `reference` frames). The colour is never named, so only memory of
    the video keeps it. NaN for a clip with no sprite in its first half or none in its second.
    Moves: a recolouring after the first appearance, sudden or gradual; a second sprite in view. Blind by
    design: a frozen clip keeps its colour (dynamic_degree sees it); a missing or faded sprite is not
    scored (NaN: sprite_presence sees it)."""
    _, sprite = read_attributes(frames)  # (B, F), -1 = none
    half = frames.shape[1] // 2
    kept = torch.full((frames.shape[0],), math.nan)
    for b, track in enumerate(sprite.cpu()):
        colour, late = first_colour(track[:half], reference), track[half:]
        late = late[late >= 0]
        if colour >= 0 and len(late):
            kept[b] = (late == colour).float().mean()
    return kept


def long_absences(frames: torch.Tensor, absence: int = 7, edge: int = 2) -> list[list[tuple[int, int, bool]]]:
    """Per clip of frames (B, F, C, H, W), every time its sprite is out of sight (read_attributes shows none)
    for at least `absence` frames and then seen again: (the last frame that shows it before, the first frame
    after, whether it is an exit). An exit leaves and comes back at the edge of what the view shows, its pixels
    within `edge` of the view's border or of a curtain in both frames, as the world's sprites do; the rest are
    blinks, a sprite vanishing and reappearing inside the view, which the world never draws. For one-sprite clips."""
    return _tracks_and_absences(frames, absence, edge)[1]


def _tracks_and_absences(frames, absence, edge=2):
    """read_attributes' sprite readings (B, F) and long_absences' spans, the frames read once."""
    _, sprite = read_attributes(frames)  # (B, F), -1 = none
    mask, curtain = _sprite_pixels(frames)  # (B, F, 4, H, W), (B, F, W)
    H, W = frames.shape[-2:]
    curtain = nnf.max_pool1d(curtain.float().flatten(0, 1)[:, None], 2 * edge - 1, 1, edge - 1).view(curtain.shape) > 0
    rows, columns = torch.arange(H, device=frames.device), torch.arange(W, device=frames.device)
    border = ((rows < edge) | (rows >= H - edge))[:, None] | ((columns < edge) | (columns >= W - edge))  # (H, W)
    at_border = (mask.any(2) & (border | curtain[:, :, None, :])).flatten(-2).any(-1).cpu()  # (B, F)
    spans = []
    for b, track in enumerate(sprite.cpu()):
        shown = torch.nonzero(track >= 0).flatten().tolist()
        spans.append([(i, j, bool(at_border[b, i] and at_border[b, j])) for i, j in zip(shown, shown[1:])
                      if j - i - 1 >= absence])
    return sprite, spans


def exit_colours(frames: torch.Tensor, absence: int = 7, after: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """The colours colour_after_exit compares, per one-sprite clip: its first appearance's (first_colour) and the
    one it shows in most of the first `after` frames that show it after its first exit of at least `absence`
    frames (long_absences); two (B,) long, -1 for a clip with no such exit."""
    sprite, spans_per_clip = _tracks_and_absences(frames, absence)  # (B, F), B lists
    first, back = torch.full((2, frames.shape[0]), -1, dtype=torch.long)
    for b, (track, spans) in enumerate(zip(sprite.cpu(), spans_per_clip)):
        exits = [back for _, back, is_exit in spans if is_exit]
        colour = first_colour(track)
        if exits and colour >= 0:
            shown = track[exits[0]:]
            first[b], back[b] = colour, shown[shown >= 0][:after].mode().values
    return first, back


def colour_after_exit(frames: torch.Tensor, absence: int = 7, after: int = 6) -> torch.Tensor:
    """Does a sprite that leaves sight come back in its own colour? Per one-sprite clip (B,): at its first exit
    of at least `absence` frames (long_absences), 1.0 if the colour it shows after its return is the colour of
    its first appearance (exit_colours), else 0.0; NaN for a clip with no such exit. Ground truth scores 1, and
    forgetting the colours paired at random (1/4 for a uniform palette). It measures a model's own samples, in
    which the model decides when sprites leave. Moves: a recolouring after the absence. Blind by design: a blink
    (not an exit); a recolouring before the first absence (identity_kept sees it)."""
    first, back = exit_colours(frames, absence, after)
    return torch.where(back >= 0, (first == back).float(), math.nan)


def recalled(frames: torch.Tensor, colour: int, leave_out: int = -1) -> float:
    """The recall probe's verdict on what a model made after a sprite's long absence, frames (1, F, C, H, W):
    1.0 if the sprite colour shown in the most frames is `colour`, else 0.0 (none shown: 0.0). With a second
    sprite in view, its colour `leave_out` is not read (read_attributes). A brief flash of the right colour
    among frames of another is a wrong answer. Blind by design to motion: a frozen frame showing the
    colour is right (dynamic_degree sees it)."""
    _, sprite = read_attributes(frames, leave_out=leave_out)  # (1, F)
    shown = sprite[sprite >= 0]
    return float(len(shown) > 0 and shown.mode().values.item() == colour)


def hidden_spans(clips: Clips) -> torch.Tensor:
    """Ground truth: the length in frames of every time a sprite was out of sight (out of the view or
    behind the curtains) and then seen again, over all clips and sprites: (N,) long."""
    present = clips.sprite_colour >= 0  # (B, S)
    lengths = []
    for track in (clips.visible_area >= 1).transpose(1, 2)[present].tolist():  # one list of booleans per sprite
        hidden, seen = 0, False
        for visible in track:
            if visible and seen and hidden:
                lengths.append(hidden)
            hidden, seen = (0, True) if visible else (hidden + 1, seen)
    return torch.tensor(lengths, dtype=torch.long)


def prompt_match(frames: torch.Tensor, backgrounds: torch.Tensor) -> float:
    """Is the named background drawn? The share of frames whose background, read from the pixels, is
    `backgrounds` (B, F), the index into BACKGROUNDS the caption names. Ground truth scores 1. Moves: the
    background switched against the caption. Blind by design: the sprites."""
    read, _ = read_attributes(frames)
    return (read == backgrounds).float().mean().item()
