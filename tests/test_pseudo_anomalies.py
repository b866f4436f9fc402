"""Pseudo-anomaly transforms: determinism, CutPaste geometry, rotations."""

from __future__ import annotations

import pytest
import torch

from robustad.errors import UserError
from robustad.methods import pseudo_anomalies as pa
from robustad.methods.pseudo_anomalies import PseudoAnomalies


def images(n: int = 4, c: int = 1, size: int = 16) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["scar", "cutout", "permutation", "elastic"])
@pytest.mark.parametrize("c", [1, 3])
def test_each_transform_is_deterministic_under_a_seed(name, c):
    x = images(c=c)
    fn = getattr(pa, name)
    a = fn(x, torch.Generator().manual_seed(5))
    b = fn(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)  # it does transform
    # shared=True: one parameter draw for every image, so identical images stay identical
    same = x[:1].expand(3, -1, -1, -1)
    s = fn(same, torch.Generator().manual_seed(2), shared=True)
    assert torch.equal(s[0], s[1]) and torch.equal(s[1], s[2])


def test_cutpaste_patch_and_mask_coincide_after_geometric_transforms():
    # On a constant image (no blur) the jittered patch is constant c inside the cut,
    # so after the (shared) flip + rotation + translation, patch == c · mask exactly.
    # The public release's bug (flip the patch, not the mask) breaks this equality.
    x = torch.full((64, 3, 32, 32), 0.5)
    gen = torch.Generator().manual_seed(0)
    patch, mask, _ = pa.scar_components(x, gen, black_prob=0.0, blur_prob=0.0)
    assert mask.sum() > 0
    for i in range(len(x)):
        inside = mask[i, 0] > 1e-3
        if not inside.any():
            continue
        ratio = patch[i][:, inside] / mask[i, 0][inside]
        const = ratio[:, :1]
        assert torch.allclose(ratio, const.expand_as(ratio), atol=1e-4)
        assert patch[i][:, ~inside].abs().max() <= 1e-3


def test_cutpaste_mask_flip_follows_patch_on_asymmetric_patch():
    # A patch with a left-right gradient: whatever geometric transform is applied,
    # the pasted values must lie only where the mask is, and the mask must be where
    # the (nonzero) patch is.
    ramp = torch.linspace(0.2, 1.0, 32).view(1, 1, 1, 32).expand(32, 1, 32, 32).contiguous()
    patch, mask, _ = pa.scar_components(ramp, torch.Generator().manual_seed(3), black_prob=0.0)
    support_patch = patch.abs().sum(1) > 1e-6
    support_mask = mask[:, 0] > 1e-6
    assert torch.equal(support_patch, support_mask)


def test_rotations_give_k_distinct_images():
    x = images(n=2, c=1, size=8)
    group = PseudoAnomalies("rotation", 4, 8)
    out = group.expand(x)
    assert out.shape == (8, 1, 8, 8)
    views = out.view(4, 2, 1, 8, 8)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(views[a], views[b])
    assert torch.equal(views[0], x)
    assert torch.equal(views[2], x.flip(-1).flip(-2))  # 180° = both flips
    assert torch.equal(torch.rot90(views[1], 1, (-2, -1)), views[2])


def test_resolution_defaults_and_errors():
    low = PseudoAnomalies("auto", None, 28)
    high = PseudoAnomalies("auto", None, 224)
    assert (low.groups, low.names) == (4, ["rotation"])
    assert (high.groups, high.names) == (2, ["scar"])
    assert PseudoAnomalies("rotation", 2, 32).slots == [("rotation", 2)]
    assert PseudoAnomalies("scar,cutout,elastic", None, 32).groups == 4
    with pytest.raises(UserError):
        PseudoAnomalies("blur", None, 32)
    with pytest.raises(UserError):
        PseudoAnomalies("scar", 3, 32)
