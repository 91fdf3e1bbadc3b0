"""Dynamic batching: requests that arrive together share one forward pass.

Each request's decoded image waits in a bounded list. One worker takes the oldest waiting request, then
waits up to `max_wait_s` for more with the same inference options (model, TTA, tile), until `max_batch`,
and predicts them in one `Predictor.predict_proba_batch` call on a single worker thread: the model is
never used by two threads at once, torch spreads one forward pass over the cores itself, and the event
loop stays free to read uploads and write answers meanwhile. A full list refuses at once (`QueueFull`,
which the server answers with 503 and Retry-After) rather than letting every client's wait grow.

    >>> batcher = Batcher(predict, max_batch=8, max_wait_s=0.01, max_queue=64)  # doctest: +SKIP
    >>> probabilities = await batcher.submit(BatchKey("cells"), image)           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to be predicted together."""

    model: str
    tta: str = "none"
    tile: tuple[int, int] | None = None


PredictBatch = Callable[[BatchKey, Sequence[np.ndarray]], list[np.ndarray]]


class QueueFull(Exception):
    """As many requests wait as the server allows."""


@dataclass(eq=False)  # told apart by identity: two uploads of one image are two jobs
class _Job:
    key: BatchKey
    image: np.ndarray
    result: asyncio.Future


class Batcher:
    """Batches `submit` calls for `predict(key, images) -> probabilities per image` (see module doc)."""

    def __init__(
        self, predict: PredictBatch, max_batch: int = 8, max_wait_s: float = 0.01, max_queue: int = 64
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"need max_batch ≥ 1, max_queue ≥ 1, max_wait_s ≥ 0; got {max_batch}, {max_queue}, {max_wait_s}"
            )
        self.predict, self.max_batch, self.max_wait_s, self.max_queue = (
            predict,
            max_batch,
            max_wait_s,
            max_queue,
        )
        self._jobs: list[_Job] = []
        self._arrived = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segwise-predict")
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []  # the size of every batch predicted, for tests and the benchmark

    @property
    def waiting(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        """Start the worker on the running event loop (the server's startup)."""
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for job in self._jobs:
            job.result.cancel()
        self._jobs.clear()
        self._thread.shutdown(wait=True)

    async def submit(self, key: BatchKey, image: np.ndarray) -> np.ndarray:
        """The image's probabilities, once its batch has been predicted; QueueFull when the list is full."""
        if len(self._jobs) >= self.max_queue:
            raise QueueFull
        job = _Job(key, image, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._arrived.set()
        return await job.result

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [job for job in await self._next_batch() if not job.result.done()]
            if not batch:  # every client of this batch went away while it waited
                continue
            self.batches.append(len(batch))
            try:
                results = await loop.run_in_executor(
                    self._thread, self.predict, batch[0].key, [j.image for j in batch]
                )
            except Exception as error:  # a bad request's error goes to its batch, the server goes on
                for job in batch:
                    if not job.result.done():
                        job.result.set_exception(error)
                continue
            for job, probabilities in zip(batch, results, strict=True):
                if not job.result.done():  # a client that went away has cancelled its future
                    job.result.set_result(probabilities)

    async def _next_batch(self) -> list[_Job]:
        while not self._jobs:
            self._arrived.clear()
            await self._arrived.wait()
        key = self._jobs[0].key
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while sum(job.key == key for job in self._jobs) < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:  # TimeoutError's alias from 3.11; its own class in 3.10
                break
        batch = [job for job in self._jobs if job.key == key][: self.max_batch]
        self._jobs = [job for job in self._jobs if job not in batch]
        return batch
