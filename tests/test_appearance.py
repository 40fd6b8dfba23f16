"""Appearance domains: registry, validation, every domain renders, per-scene style variation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from s2e.sim.appearance import DOMAINS, get_domain
from s2e.sim.generator import SceneConfig, generate_world
from s2e.sim.render import Raycaster
from s2e.sim.robots import get_robot
from s2e.sim.textures import NUM_MATERIALS, TEXTURE_SIZE, StyleCache, make_scene_style


def test_registry_has_the_training_and_recorded_looks_and_unknown_names_list_known_ones():
    assert {"recorded", "sim", "overcast", "dusk"} <= set(DOMAINS)
    assert get_domain("sim") is DOMAINS["sim"]
    custom = replace(DOMAINS["sim"], name="custom", noise_std=2.0)
    assert get_domain(custom) is custom
    with pytest.raises(ValueError, match=r"unknown appearance domain 'night'.*'recorded'.*'sim'"):
        get_domain("night")
    with pytest.raises(ValueError, match="unknown appearance domain"):
        Raycaster(32, 24, domain="night")


def test_incomplete_or_invalid_domains_are_refused():
    base = DOMAINS["sim"]
    with pytest.raises(ValueError, match="grass"):
        replace(base, ground={k: v for k, v in base.ground.items() if k != "grass"})
    with pytest.raises(ValueError, match="scooter"):
        replace(base, obstacle={k: v for k, v in base.obstacle.items() if k != "scooter"})
    with pytest.raises(ValueError, match="fog_distance"):
        replace(base, fog_distance=0.0)
    with pytest.raises(ValueError, match="shirt"):
        replace(base, shirt=())


def test_every_domain_renders_a_distinct_picture_of_the_same_scene():
    robot = get_robot("quadruped")
    scene = generate_world([11, 12], SceneConfig(), robot).scene
    start, ahead = scene.route[:, 0], scene.route[:, 1]
    yaw = torch.atan2(ahead[:, 1] - start[:, 1], ahead[:, 0] - start[:, 0])
    images = {}
    for name in DOMAINS:
        rgb, _ = Raycaster(64, 36, domain=name).render(scene, start, yaw, robot.camera_height, robot.hfov_deg, noise_generator=torch.Generator().manual_seed(0))
        assert rgb.shape == (2, 3, 36, 64) and rgb.dtype == torch.uint8
        assert rgb.float().std() > 10, name
        images[name] = rgb.float()
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (images[a] - images[b]).abs().mean() > 5, (a, b)
    # The sim-to-real gap in miniature: recorded is noisy/blurred and warmer than sim.
    assert images["recorded"][:, 0].mean() / images["recorded"][:, 2].mean() > images["sim"][:, 0].mean() / images["sim"][:, 2].mean()


def test_scene_styles_are_reproducible_per_seed_and_domain():
    atlas, repeat = make_scene_style(DOMAINS["recorded"], 5)
    assert atlas.shape == (NUM_MATERIALS, TEXTURE_SIZE, TEXTURE_SIZE, 3) and repeat.shape == (NUM_MATERIALS, 2)
    assert 0 <= atlas.min() and atlas.max() <= 1
    again, _ = make_scene_style(DOMAINS["recorded"], 5)
    other_seed, _ = make_scene_style(DOMAINS["recorded"], 6)
    other_domain, _ = make_scene_style(DOMAINS["sim"], 5)
    assert torch.equal(atlas, again)
    assert not torch.equal(atlas, other_seed) and not torch.equal(atlas, other_domain)


def test_style_cache_rebuilds_only_when_seeds_change_and_colours_pedestrians_by_index():
    cache = StyleCache(DOMAINS["sim"], torch.device("cpu"))
    first, _ = cache.batch(torch.tensor([1, 2]))
    assert cache.batch(torch.tensor([1, 2]))[0] is first
    swapped, _ = cache.batch(torch.tensor([2, 1]))
    half = first.shape[1] // 2
    assert torch.equal(swapped[:, :half], first[:, half:])
    colours = cache.pedestrian_colours(torch.tensor([1, 2]), 8).t().reshape(2, 8, 3, 3)
    assert torch.equal(colours, cache.pedestrian_colours(torch.tensor([1, 2]), 8).t().reshape(2, 8, 3, 3))
    shirts = colours[:, :, 1]
    assert len({tuple(c) for c in shirts.reshape(-1, 3).tolist()}) > 1  # not everyone dressed alike
    assert not torch.equal(colours[0], colours[1])
