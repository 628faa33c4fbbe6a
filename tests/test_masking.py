"""The MiM levels: ratios, geometry (L2 under hidden L1 octants, L3 under hidden L2 tokens), seeds."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_mim.masking import LevelConfig, build_levels, octant_masks, random_token_mask


def levels_for(crops, seed=0, cfg=LevelConfig()):
    return build_levels(crops, cfg, torch.Generator().manual_seed(seed))


@pytest.fixture
def crops():
    # every voxel distinct, so a cut can be located in the crop exactly
    return torch.arange(2 * 128 * 128 * 64, dtype=torch.float64).reshape(2, 1, 128, 128, 64)


def test_counts_and_shapes(crops):
    l1, l2, l3 = levels_for(crops)
    assert l1.volumes.shape == (2, 1, 64, 64, 32)
    assert l2.volumes.shape == (8, 1, 64, 64, 32)
    assert l3.volumes.shape == (32, 1, 64, 64, 32)


def test_mask_ratios_exact(crops):
    l1, l2, l3 = levels_for(crops)
    n = 4 * 4 * 2
    assert (l1.hidden.flatten(1).sum(1) == n // 2).all()
    assert (l2.hidden.flatten(1).sum(1) == round(0.6 * n)).all()
    assert (l3.hidden.flatten(1).sum(1) == round(0.5 * n)).all()


def test_l1_hidden_regions_are_whole_octants(crops):
    l1, _, _ = levels_for(crops)
    octants = octant_masks((4, 4, 2))
    for hidden in l1.hidden:
        covered = [bool((hidden & o).any()) for o in octants]
        assert sum(covered) == 4
        assert all(torch.equal(hidden & o, o) for o, c in zip(octants, covered) if c)  # whole octants


def test_l2_volumes_lie_exactly_under_hidden_l1_octants(crops):
    """The defect of the authors' code (slabs of 27 raster indices) would fail this."""
    l1, l2, _ = levels_for(crops)
    for i, volume in enumerate(l2.volumes):
        b = int(l2.parent_index[i])
        parent = l2.parent_tokens[i]
        assert torch.equal(parent & l1.hidden[b], parent), "L2 parent region is not hidden in L1"
        # locate the cut: its first voxel value gives its offset in the crop
        z, y, x = torch.nonzero(crops[b, 0] == volume[0, 0, 0, 0])[0].tolist()
        assert torch.equal(crops[b, :, z:z + 64, y:y + 64, x:x + 32], volume)
        # the parent tokens of L1 (token = 16 voxels at half resolution = 32 crop voxels) cover it
        idx = torch.nonzero(parent)
        assert idx.min(0).values.tolist() == [z // 32, y // 32, x // 32]
        assert (idx.max(0).values + 1).tolist() == [(z + 64) // 32, (y + 64) // 32, (x + 32) // 32]


def test_l3_volumes_are_hidden_l2_tokens_upsampled(crops):
    _, l2, l3 = levels_for(crops)
    for i, volume in enumerate(l3.volumes):
        parent = int(l3.parent_index[i])
        token = l3.parent_tokens[i]
        assert token.sum() == 1 and bool((token & l2.hidden[parent]).any()), "L3 must come from a hidden L2 token"
        z, y, x = (torch.nonzero(token)[0] * 16).tolist()
        source = l2.volumes[parent:parent + 1, :, z:z + 16, y:y + 16, x:x + 16]
        expected = F.interpolate(source, size=(64, 64, 32), mode="trilinear", align_corners=False)[0]
        assert torch.allclose(volume, expected)


def test_seeded_and_reproducible(crops):
    a, b, c = levels_for(crops, 1), levels_for(crops, 1), levels_for(crops, 2)
    assert all(torch.equal(x.hidden, y.hidden) for x, y in zip(a, b))
    assert not all(torch.equal(x.hidden, y.hidden) for x, y in zip(a, c))


def test_mae_level():
    crops = torch.randn(3, 1, 32, 48, 64)
    (level,) = levels_for(crops, cfg=LevelConfig(num_levels=1, l1_mask_ratio=0.75))
    assert torch.equal(level.volumes, crops)
    assert (level.hidden.flatten(1).sum(1) == round(0.75 * 2 * 3 * 4)).all()


def test_anisotropic_patch_and_bad_patch():
    crops = torch.randn(1, 1, 64, 128, 192)  # patch 32x64x96
    l1, l2, l3 = levels_for(crops)
    assert l3.volumes.shape[2:] == (32, 64, 96)
    with pytest.raises(ValueError, match="multiple of 32"):
        levels_for(torch.randn(1, 1, 96, 64, 64))  # patch 48: L1 octants need an even token grid


def test_random_token_mask_exact():
    mask = random_token_mask(5, (3, 4, 5), 0.3, torch.Generator().manual_seed(0))
    assert (mask.flatten(1).sum(1) == 18).all()


@pytest.mark.parametrize("patch, warns", [((32, 32, 32), True), ((32, 64, 64), True), ((64, 64, 64), False),
                                          ((96, 96, 96), False), ((64, 160, 128), False)])
def test_hierarchy_warning_when_octants_are_single_tokens(patch, warns):
    warning = LevelConfig().hierarchy_warning(patch)
    assert (warning is not None) == warns
    if warns:
        assert str(list(patch)) in warning
    assert LevelConfig(num_levels=1).hierarchy_warning(patch) is None  # MAE has no octants


def test_regions_of_tokens_on_an_8_cubed_grid_and_fewer_subvolumes(crops):
    """Primus's levels (8^3 tokens, L3 regions of 2^3 tokens) with 1+2+2 sub-volumes: L2 hides whole regions, each L3
    volume is one hidden L2 region upsampled, its parent tokens exactly that region, and L2 volumes lie under
    hidden L1 octants."""
    cfg = LevelConfig(token_size=8, l3_region_tokens=2, l2_per_l1=2, l3_per_l2=1)
    assert cfg.patch_multiple == 16 and cfg.volumes_per_crop == [1, 2, 2]
    l1, l2, l3 = levels_for(crops, cfg=cfg)
    assert [lv.volumes.shape[0] for lv in (l1, l2, l3)] == [2, 4, 4] and l2.hidden.shape[1:] == (8, 8, 4)
    regions = l2.hidden.view(4, 4, 2, 4, 2, 2, 2)  # (N, rz, 2, ry, 2, rx, 2)
    assert torch.equal(regions.all(dim=(2, 4, 6)), regions.any(dim=(2, 4, 6))), "L2 must hide whole 2^3 regions"
    assert (l2.hidden.flatten(1).sum(1) == round(0.6 * 32) * 8).all()
    for i, volume in enumerate(l2.volumes):
        parent = l2.parent_tokens[i]
        assert torch.equal(parent & l1.hidden[int(l2.parent_index[i])], parent)
    for i, volume in enumerate(l3.volumes):
        parent, tokens = int(l3.parent_index[i]), l3.parent_tokens[i]
        assert tokens.sum() == 8 and torch.equal(tokens & l2.hidden[parent], tokens), "a hidden 2^3 region"
        low, high = torch.nonzero(tokens).min(0).values, torch.nonzero(tokens).max(0).values + 1
        assert (high - low).tolist() == [2, 2, 2]
        (z, y, x) = (low * 8).tolist()
        source = l2.volumes[parent:parent + 1, :, z:z + 16, y:y + 16, x:x + 16]
        expected = F.interpolate(source, size=(64, 64, 32), mode="trilinear", align_corners=False)[0]
        assert torch.allclose(volume, expected)
    with pytest.raises(ValueError, match="between 1 and that many"):
        LevelConfig(l2_per_l1=5)
