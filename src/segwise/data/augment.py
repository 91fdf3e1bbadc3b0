"""Augmentation on the training device: whole batches at once, each sample with its own random draw."""

from __future__ import annotations

import torch


def random_dihedral(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip, vertical flip and (square inputs) transpose per sample: the 8 symmetries
    of the square. Images N×C×H×W, masks N×H×W; the same draw moves image and mask together."""
    count = images.shape[0]
    draws = torch.rand(3, count, generator=generator).lt(0.5).to(images.device)

    def apply(flag: torch.Tensor, transform) -> None:
        nonlocal images, masks
        images = torch.where(flag.view(-1, 1, 1, 1), transform(images), images)
        masks = torch.where(flag.view(-1, 1, 1), transform(masks), masks)

    apply(draws[0], lambda t: t.flip(-1))
    apply(draws[1], lambda t: t.flip(-2))
    if images.shape[-1] == images.shape[-2]:
        apply(draws[2], lambda t: t.transpose(-1, -2))
    return images, masks
