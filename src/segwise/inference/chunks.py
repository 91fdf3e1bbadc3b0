"""Running a model on a batch in chunks that fit the GPU: on an out-of-memory error the chunk halves
and the same samples are tried again (TTA views, sliding-window tiles)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


class HalvingOnOutOfMemory:
    """`forward(batch)` samples along the first dimension at a time, at most `size` of them (all at
    first); a CUDA out-of-memory error halves `size` for this batch and the later ones, and the chunk
    is run again, down to one sample (whose error is raised: nothing smaller can be tried). The
    outputs are concatenated: the same result as one call, in less memory."""

    def __init__(self, forward: Callable[[Tensor], Tensor]) -> None:
        self.forward = forward
        self.size: int | None = None  # None: no out-of-memory yet, the whole batch at once

    def __call__(self, batch: Tensor) -> Tensor:
        outputs, start = [], 0
        while start < len(batch):
            chunk = batch[start : start + (self.size or len(batch))]
            try:
                outputs.append(self.forward(chunk))
            except torch.cuda.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                self.size = len(chunk) // 2
                torch.cuda.empty_cache()  # the failed chunk's blocks, back for the smaller one
                continue
            start += len(chunk)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
