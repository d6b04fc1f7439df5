"""Tests of the procedural world and its metrics (to be merged into test_tiny_videossm.py)."""

import time

import pytest
import torch

from train import (BACKGROUNDS, MAX_SPRITES, SHAPES, VOCAB, World, drift, dynamic_degree,
                   fidelity, flicker, frozen_fraction, parse_caption, random_caption,
                   read_attributes, video_metrics)


@pytest.fixture(scope="module")
def long_clips():
    return World().sample(batch_size=8, frames=240, seed=3)


def test_world_is_deterministic_per_seed():
    world = World()
    first, again, other = world.sample(4, 10, seed=7), world.sample(4, 10, seed=7), world.sample(4, 10, seed=8)
    assert torch.equal(first.video, again.video) and first.captions == again.captions
    assert torch.equal(first.position, again.position)
    assert not torch.equal(first.video, other.video)


def test_frames_shape_range_and_speed():
    world = World()
    clips = world.sample(16, 12, seed=0)
    assert clips.video.shape == (16, 12, 3, 32, 32) and clips.video.dtype == torch.float32
    assert clips.video.min() >= -1 and clips.video.max() <= 1
    assert World(size=48).sample(2, 5, seed=0).video.shape == (2, 5, 3, 48, 48)
    # One thread, best of three: on a shared 2-core machine torch's thread pool can wait on a busy
    # core for milliseconds per op; what this guards is the vectorisation (a loop would take seconds).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = []
        for seed in range(3):
            start = time.perf_counter()
            world.sample(16, 12, seed=seed)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert min(seconds) < 0.2


def test_captions_agree_with_ground_truth():
    clips = World().sample(8, 6, seed=2, switch_at=3)
    for b in range(8):
        for f in range(6):
            caption = parse_caption(clips.captions[b][f])
            assert caption.count == clips.count[b]
            assert caption.shape == clips.shape[b, f] and caption.background == clips.background[b, f]
    assert ((clips.sprite_colour >= 0).sum(1) == clips.count).all()


def test_bounces_keep_speed_and_flip_only_at_walls(long_clips):
    world = World()
    lo, hi = world.centre_range
    position = long_clips.position  # (B, F, S, 2)
    step = position[:, 1:] - position[:, :-1]  # (B, F-1, S, 2)
    near_wall = ((position - lo) < world.max_speed) | ((hi - position) < world.max_speed)
    free = ~(near_wall[:, 1:] | near_wall[:, :-1])  # steps that cannot have touched a wall
    # away from walls, each velocity component keeps its size all clip long
    size = step.abs()
    largest = torch.where(free, size, -torch.inf).amax(1)
    smallest = torch.where(free, size, torch.inf).amin(1)
    has_free = free.any(1)
    assert (largest - smallest)[has_free].max() < 1e-3
    speed = step.norm(dim=-1)[free.all(-1)]
    assert speed.min() > world.min_speed - 1e-3 and speed.max() < world.max_speed + 1e-3
    # a component reverses only next to a wall
    flips = torch.sign(step[:, 1:]) != torch.sign(step[:, :-1])
    assert flips.any() and not (flips & ~near_wall[:, 1:-1]).any()
    assert position.min() >= lo - 1e-4 and position.max() <= hi + 1e-4


def test_sprites_leave_the_view_and_come_back(long_clips):
    visible = long_clips.visible  # (B, F, S)
    seen = visible.cummax(1).values
    left_after_seen = (seen & ~visible).cummax(1).values
    came_back = (left_after_seen & visible).any(1)  # (B, S)
    present = long_clips.sprite_colour >= 0
    assert came_back[present].float().mean() > 0.75
    assert not visible[~present[:, None].expand_as(visible)].any()


def test_caption_switch_changes_named_attributes_only():
    world, k = World(), 5
    plain, switched = world.sample(16, 12, seed=4), world.sample(16, 12, seed=4, switch_at=k)
    assert torch.equal(switched.video[:, :k], plain.video[:, :k])
    assert torch.equal(switched.position, plain.position)
    assert torch.equal(switched.sprite_colour, plain.sprite_colour)
    assert torch.equal(switched.count, plain.count)
    changed = (switched.shape[:, k:] != plain.shape[:, k:]) | (switched.background[:, k:] != plain.background[:, k:])
    assert changed.all()
    assert all(c[k - 1] == p[k - 1] and c[k] != p[k] for c, p in zip(switched.captions, plain.captions))
    background, _ = read_attributes(switched.video)
    assert torch.equal(background, switched.background)  # the new background shows from frame k
    with pytest.raises(ValueError, match="switch_at"):
        world.sample(2, 12, seed=0, switch_at=12)


def test_parse_caption_errors_and_round_trip():
    assert parse_caption("two circles on blue") == (2, SHAPES.index("circle"), list(BACKGROUNDS).index("blue"))
    with pytest.raises(ValueError, match="'dog'") as error:
        parse_caption("a dog on blue")
    assert str(VOCAB) in str(error.value)
    for malformed in ["a circles on blue", "two circle on blue", "on blue a circle", "a circle blue", ""]:
        with pytest.raises(ValueError, match="grammar"):
            parse_caption(malformed)
    generator = torch.Generator().manual_seed(0)
    captions = {random_caption(generator) for _ in range(200)}
    assert len(captions) == MAX_SPRITES * len(SHAPES) * len(BACKGROUNDS)
    assert all(parse_caption(caption).text() == caption for caption in captions)


def test_read_attributes_recovers_ground_truth(long_clips):
    background, sprite = read_attributes(long_clips.video)
    assert (background == long_clips.background).float().mean() >= 0.99
    area = long_clips.visible_area.sort(-1, descending=True)  # (B, F, S)
    well_visible = (area.values[..., 0] >= 20) & (area.values[..., 0] >= 2 * area.values[..., 1])
    colours = long_clips.sprite_colour[:, None].expand_as(area.indices)
    dominant = colours.gather(2, area.indices[..., :1])[..., 0]  # (B, F)
    assert well_visible.float().mean() > 0.2
    assert (sprite[well_visible] == dominant[well_visible]).float().mean() >= 0.99
    assert (sprite[long_clips.visible_area.sum(-1) == 0] == -1).all()


def test_metrics_calibration(long_clips):
    video = long_clips.video
    truth = video_metrics(video, chunk_frames=3, sprites=long_clips.count)
    assert truth["fidelity"] > 0.9
    assert truth["subject_consistency"] > 0.9 and truth["background_consistency"] > 0.9
    assert truth["dynamic_degree"] > 0.005 and truth["frozen_fraction"] < 0.5

    frozen = video[:, :1].expand_as(video)
    assert dynamic_degree(frozen) == 0 and frozen_fraction(frozen) == 1

    noisy = video + 0.1 * torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    assert fidelity(noisy) < truth["fidelity"] - 0.2
    assert flicker(noisy) > truth["flicker"] + 0.05

    ramp = torch.linspace(0, 0.5, video.shape[1])[None, :, None, None, None]
    assert drift(video + ramp) > 2 * truth["drift"]

    with pytest.raises(ValueError, match="shape"):
        fidelity(video[0])
