"""Dynamic batching: requests that arrive together share one forward pass.

Each request's decoded image waits in a bounded list. One worker takes the oldest waiting request, then
waits up to `max_wait_s` for more with the same inference options (model, TTA, tile), until `max_batch`,
and predicts them in one `Predictor.predict_proba_batch` call on a single worker thread, then finishes
each request there too (its decision, post-processing and encoding: `finish`). One thread does all the
numerical work, so the model is never used by two threads at once and torch's own threads have the
cores to themselves: finishing a batch's requests in as many threads beside the next forward pass
oversubscribes a small machine and made batching slower than none. The event loop stays free to read
uploads and send answers. A full list refuses at once (`QueueFull`, which the server answers with 503
and Retry-After) rather than letting every client's wait grow.

    >>> batcher = Batcher(predict, max_batch=8, max_wait_s=0.01, max_queue=64)  # doctest: +SKIP
    >>> answer = await batcher.submit(BatchKey("cells"), image, finish)          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to be predicted together."""

    model: str
    tta: str = "none"
    tile: tuple[int, int] | None = None


PredictBatch = Callable[[BatchKey, Sequence[np.ndarray]], list[np.ndarray]]


def _same(probabilities: np.ndarray) -> np.ndarray:
    return probabilities


class QueueFull(Exception):
    """As many requests wait as the server allows."""


@dataclass(eq=False)  # told apart by identity: two uploads of one image are two jobs
class _Job:
    key: BatchKey
    image: np.ndarray
    finish: Callable[[np.ndarray], Any]  # the image's probabilities → what the request answers
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

    async def submit(
        self, key: BatchKey, image: np.ndarray, finish: Callable[[np.ndarray], Any] = _same
    ) -> Any:
        """`finish(probabilities)` of the image once its batch has been predicted (default: the
        probabilities); QueueFull when the list is full. An exception of `finish` is this request's."""
        if len(self._jobs) >= self.max_queue:
            raise QueueFull
        job = _Job(key, image, finish, asyncio.get_running_loop().create_future())
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
                outcomes = await loop.run_in_executor(self._thread, self._run, batch)
            except Exception as error:  # a failed forward pass fails its batch; the server goes on
                outcomes = [(None, error)] * len(batch)
            for job, (value, error) in zip(batch, outcomes, strict=True):
                if job.result.done():  # a client that went away has cancelled its future
                    continue
                if error is None:
                    job.result.set_result(value)
                else:
                    job.result.set_exception(error)

    def _run(self, batch: list[_Job]) -> list[tuple[Any, Exception | None]]:
        """On the worker thread: the batch's forward pass, then each request's `finish` (value, error)."""
        outcomes = []
        for job, probabilities in zip(
            batch, self.predict(batch[0].key, [j.image for j in batch]), strict=True
        ):
            try:
                outcomes.append((job.finish(probabilities), None))
            except Exception as error:
                outcomes.append((None, error))
        return outcomes

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
