"""Mini-batches straight from the decoded uint8 arrays (no decoding, no workers), and progressive
resizing of a batch on the device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import augment_batch
from . import distributed


class Batches:
    """Shuffled mini-batches sliced straight from the decoded uint8 arrays: no decoding, no workers."""

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        batch_size: int,
        mean,
        std,
        device,
        process: distributed.Process = distributed.SINGLE,
    ) -> None:
        self.images = torch.from_numpy(images)  # N×H×W×C uint8
        self.masks = torch.from_numpy(masks)  # N×H×W uint8 class indices (per-label: N×C×H×W of 0/1)
        self.batch_size, self.device, self.process = batch_size, device, process
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self._scale, self._shift = 1 / self.std, -self.mean / self.std  # normalize in one pass

    def __len__(self) -> int:
        return len(self.images)

    def prepare(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images N×C×H×W float (0..255, channels-last) and masks N×H×W int64 of the samples `index`."""
        # index_select, not fancy indexing: a plain gather of whole rows, the cheaper of the two on a CPU
        images = self.images.index_select(0, index).to(self.device, non_blocking=True)
        # converted as cached, channels-last: no reordering pass, and what the model
        # (channels-last by default) and augmentation's colour step read as they are
        batch = images.float().permute(0, 3, 1, 2)
        return batch, self.masks.index_select(0, index).to(self.device, non_blocking=True).long()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, images, self._scale)  # (images − mean) / std

    def augment(
        self, images: torch.Tensor, masks: torch.Tensor, preset, generator: torch.Generator, sampling=None
    ):
        """Augmented with `preset` and normalized, the normalization folded into augmentation's last
        pass: what training feeds the model. Pixels from outside an image show the mean (0 once normalized).
        `sampling` (a data.augment.ClassSampling) centres some crops on chosen classes."""
        return augment_batch(
            images, masks, preset, generator, self.mean, self.mean, self.std, sampling=sampling
        )

    def epoch(self, generator: torch.Generator | None, drop_last: bool):
        """This process's batches: a shuffled, sharded order with `generator`, else every sample once in
        order (validation; each process takes every world_size-th, no padding, so nothing counts twice)."""
        if generator is not None:
            order = self.shuffled(generator)
        else:
            order = torch.arange(len(self))[self.process.rank :: self.process.world_size]
        for start in range(0, self._batch_count(len(order), drop_last) * self.batch_size, self.batch_size):
            yield self.prepare(order[start : start + self.batch_size])

    def shuffled(self, generator: torch.Generator) -> torch.Tensor:
        """This process's shard of one shuffled order of the samples (every process shuffles alike)."""
        return distributed.shard(torch.randperm(len(self), generator=generator), self.process)

    def process_seed(self, generator: torch.Generator) -> int:
        """A seed of this process's own, from one draw of the shared `generator`."""
        return distributed.own_seed(generator, self.process)

    def batches_per_epoch(self, drop_last: bool) -> int:
        """Training batches of one process in one epoch (every process gets the same number)."""
        return self._batch_count(-(-len(self) // self.process.world_size), drop_last)

    def _batch_count(self, count: int, drop_last: bool) -> int:
        """With `drop_last`, a trailing single sample is skipped (batch norm cannot train on one sample)
        unless it is the whole dataset."""
        full, rest = divmod(count, self.batch_size)
        return full + (rest > 1 or (rest == 1 and (not drop_last or full == 0)))


def resize_batch(images: torch.Tensor, masks: torch.Tensor, fraction: float):
    """Progressive resizing on the device: images bilinear (antialiased), masks nearest (labels stay
    labels); masks N×H×W, or N×C×H×W (one plane per label)."""
    if fraction == 1.0:
        return images, masks
    size = [max(8, round(side * fraction)) for side in images.shape[-2:]]
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    planes = masks if masks.dim() == 4 else masks[:, None]
    planes = F.interpolate(planes.float(), size=size, mode="nearest").long()
    return images, planes if masks.dim() == 4 else planes[:, 0]
