"""`segwise serve` under load: dynamic batching against one request at a time, same run, same process.

    .venv/bin/python bench/serve.py                    # 320 requests from 16 clients, 256×256 images
    .venv/bin/python bench/serve.py --requests 160 --size 512

A U-Net/resnet18 run is trained for one epoch on synthetic data at the image size (its accuracy does not
matter here, its cost does), then served twice on a loopback port by uvicorn in this process: with
dynamic batching (up to --max-batch images a forward pass, waiting up to 10 ms for them) and with
`--max-batch 1` (each request predicted alone, in arrival order). --clients threads each send their
share of --requests PNG uploads one after the other and wait for the mask. Reported: requests per
second, and the 50th/99th percentile latency of a request (upload to mask).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import segwise
from segwise.data.synthetic import write_synthetic_dataset
from segwise.serve import create_app, in_background


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(size: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def train_run(folder: Path, size: int) -> Path:
    data = write_synthetic_dataset(folder / "data", num_train=16, num_val=4, num_test=0, size=size)
    result = segwise.train(
        data, runs_dir=folder / "runs", name="bench", arch="unet", encoder="resnet18", encoder_weights="none",
        epochs=1, batch_size=4, size=[size, size], progress=False,
    )  # fmt: skip
    return result.run_dir


def load(url: str, uploads: list[bytes], clients: int) -> tuple[float, np.ndarray]:
    """Seconds for all uploads, and each request's latency; every answer must be a 200."""
    latencies = np.zeros(len(uploads))
    lock = threading.Lock()
    next_index = [0]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as session:
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= len(uploads):
                    return
                started = time.perf_counter()
                response = session.post("/predict", content=uploads[index])
                latencies[index] = time.perf_counter() - started
                assert response.status_code == 200, response.text

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return time.perf_counter() - started, latencies


def row(run: Path, uploads: list[bytes], clients: int, max_batch: int) -> dict:
    app = create_app([run], device="cpu", max_batch=max_batch, max_wait_ms=10 if max_batch > 1 else 0,
                     max_queue=len(uploads))  # fmt: skip
    with in_background(app) as url:
        load(url, uploads[: clients * 2], clients)  # warm-up: first-call costs out of the measurement
        app.state.batcher.batches.clear()
        seconds, latencies = load(url, uploads, clients)
    batches = app.state.batcher.batches
    return {
        "max_batch": max_batch,
        "throughput": len(uploads) / seconds,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "mean_batch": float(np.mean(batches)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = train_run(Path(folder), args.size)
        uploads = [png_bytes(random_image(args.size, seed=i)) for i in range(args.requests)]
        rows = [row(run, uploads, args.clients, args.max_batch), row(run, uploads, args.clients, 1)]
    print(f"\n{args.requests} requests, {args.clients} clients, {args.size}×{args.size} PNG → mask PNG, CPU")
    print("| server | requests/s | p50 latency | p99 latency | mean batch |\n|---|---|---|---|---|")
    for result in rows:
        name = "dynamic batching" if result["max_batch"] > 1 else "one request at a time"
        print(f"| {name} (max batch {result['max_batch']}) | {result['throughput']:.1f} | "
              f"{result['p50_ms']:.0f} ms | {result['p99_ms']:.0f} ms | {result['mean_batch']:.1f} |")  # fmt: skip
    print(
        f"\nthroughput ratio (batching / one at a time): {rows[0]['throughput'] / rows[1]['throughput']:.2f}×"
    )


if __name__ == "__main__":
    main()
