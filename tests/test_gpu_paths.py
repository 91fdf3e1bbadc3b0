"""What a GPU run depends on, shown on the CPU: colour-table positions under a perturbed matmul (TF32),
the precision chosen without emulated bf16, the fp16 step with a GradScaler, the training loss read
back every few steps instead of every step, the out-of-memory fallbacks of TTA and sliding window, and
(2 gloo processes) sharded, per-rank-seeded user transforms and a plan decided once on rank 0."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from segwise.data.augment import PRESETS, Augment, augment_batch


def saturated_batch(count: int = 4, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB images of only 0 and 255: colour maps send them to the ends of their tables."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 2, (count, 3, size, size), generator=generator).float() * 255
    return images, torch.zeros(count, size, size, dtype=torch.long)


def test_colour_table_positions_stay_inside_the_tables_under_a_perturbed_matmul(monkeypatch):
    """On a GPU the positions' matmul may run in TF32 (10-bit mantissa): ±1e-3 relative error moves a
    position by several entries, past the one-entry margin. The lookup clamps each channel's positions
    into its own table, so the values stay the colour map's, at the ends of the range."""
    images, masks = saturated_batch()
    recipe = Augment(p_color=1.0, brightness=0.3, contrast=0.3, saturation=0.4, hue=20)
    exact, exact_masks = augment_batch(images, masks, recipe, torch.Generator().manual_seed(1))
    addmm, noise = torch.addmm, torch.Generator().manual_seed(0)

    def perturbed_addmm(*args, out=None, **kwargs):
        result = addmm(*args, out=out, **kwargs)
        result.mul_(1 + (torch.rand(result.shape, generator=noise) * 2 - 1) * 1e-3)
        return result

    monkeypatch.setattr(torch, "addmm", perturbed_addmm)
    perturbed, perturbed_masks = augment_batch(images, masks, recipe, torch.Generator().manual_seed(1))
    assert torch.equal(perturbed_masks, exact_masks)
    assert 0 <= perturbed.min() and perturbed.max() <= 255
    # a few entries off at most, never another channel's or sample's values: within 2 grey levels
    assert (perturbed - exact).abs().max() <= 2.0


def test_colour_tables_unperturbed_still_equal_the_plain_pipeline():
    images, masks = saturated_batch()
    recipe = dataclasses.replace(PRESETS["heavy"], p_noise=0.0, p_blur=0.0)
    images = images.double()
    fast, _ = augment_batch(images, masks, recipe, torch.Generator().manual_seed(2))
    plain, _ = augment_batch(images, masks, recipe, torch.Generator().manual_seed(2), fast=False)
    assert torch.allclose(fast, plain, rtol=0, atol=1e-9)
