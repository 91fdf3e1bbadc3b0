"""Benchmark segwise's data path (cached arrays + batched augmentation) against a torch DataLoader
with an albumentations per-sample pipeline doing the same transforms.

Run from the repository root: `.venv/bin/python bench/data.py [--trials 5] [--workers 2]` (needs
albumentations and opencv, and ../shared/datasets/camvid11). CamVid train split, 367 pairs 480×360,
batch 16, the `default` preset. Both sides deliver the same thing: normalized float N×3×360×480 images
and integer masks on the training device, shuffled, one epoch (every sample) per trial. Trials alternate
(A, B, A, B, ...) and the table shows the median samples/s of each side, the ratios (of the medians,
and the median of each round's ratio), and the CPU time (this process plus its DataLoader workers) per
sample, which a busy machine disturbs less than wall-clock rates.

- segwise: `load_data` (decoded once into the memory-mapped cache; the one-time decode is reported
  separately) → `Batches` slicing → `Batches.augment(..., "default")` (augment_batch with the
  normalization folded in), in the main process
  (as the trainer does; torch's intra-op threads use the cores), and the same split by whole batches
  across `--workers` DataLoader workers (one thread each), the peers' worker count;
- peer (files): the usual pipeline: a Dataset that decodes each JPEG/PNG with OpenCV every time, resizes
  to the training size, applies an albumentations Compose, in a DataLoader with `--workers` workers;
- peer (arrays): the same albumentations Compose over segwise's decoded arrays (no decoding), same
  workers: separates what the cache saves from what batched augmentation saves.

Like `segwise train` on a CPU, the process first sets glibc to reuse freed large blocks
(`segwise.engine.devices.keep_freed_memory`); it applies to every pipeline here, the peers included.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from segwise.constants import IGNORE_INDEX  # noqa: E402
from segwise.data import load_data  # noqa: E402
from segwise.data.augment import PRESETS  # noqa: E402
from segwise.engine.batches import Batches  # noqa: E402
from segwise.engine.devices import keep_freed_memory  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/datasets/camvid11"
BATCH = 16


def albumentations_default(height: int, width: int, fill: list[float]) -> A.Compose:
    """segwise's `default` preset (segwise.data.augment.PRESETS) spelled in albumentations."""
    p = PRESETS["default"]
    aspect = (
        width / height
    )  # segwise's crop ratio is relative to the image's aspect, albumentations' absolute
    return A.Compose(
        [
            A.HorizontalFlip(p=p.p_hflip),
            A.Affine(
                scale=p.scale,
                rotate=(-p.rotate, p.rotate),
                shear=(-p.shear, p.shear),
                translate_percent=(-p.translate, p.translate),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill,
                fill_mask=IGNORE_INDEX,
                p=p.p_affine,
            ),
            A.RandomResizedCrop(
                size=(height, width),
                scale=p.crop_area,
                ratio=(p.crop_ratio[0] * aspect, p.crop_ratio[1] * aspect),
                p=p.p_crop,
            ),
            A.Sequential(
                [
                    A.ColorJitter(
                        brightness=p.brightness,
                        contrast=p.contrast,
                        saturation=p.saturation,
                        hue=p.hue / 360,
                        p=1.0,
                    ),
                    A.RandomGamma(gamma_limit=(p.gamma[0] * 100, p.gamma[1] * 100), p=1.0),
                ],
                p=p.p_color,
            ),
            A.GaussianBlur(sigma_limit=p.blur_sigma, blur_limit=0, p=p.p_blur),
            A.GaussNoise(std_range=p.noise_std, p=p.p_noise),
        ]
    )


class FileDataset(torch.utils.data.Dataset):
    """The common per-sample pipeline: decode the files every time, resize, augment."""

    def __init__(self, pairs, size, transform) -> None:
        self.pairs, self.size, self.transform = pairs, size, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        height, width = self.size
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        out = self.transform(image=image, mask=mask)
        return torch.from_numpy(out["image"]), torch.from_numpy(out["mask"])


class ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, images, masks, transform) -> None:
        self.images, self.masks, self.transform = images, masks, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        out = self.transform(image=np.asarray(self.images[index]), mask=np.asarray(self.masks[index]))
        return torch.from_numpy(out["image"]), torch.from_numpy(out["mask"])


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def peer_epoch(dataset, workers: int, seed: int, mean, std) -> int:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        drop_last=False,  # like Batches: a trailing batch of more than one sample is kept
        num_workers=workers,
        worker_init_fn=_seed_worker if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
    seen = 0
    for images, masks in loader:
        x = (images.permute(0, 3, 1, 2).float() - mean) / std
        y = masks.long()
        seen += len(y)
    assert x.shape[1:] == (3, *dataset_size(dataset)) and y.max() <= IGNORE_INDEX
    return seen


def dataset_size(dataset) -> tuple[int, int]:
    return tuple(dataset.size) if hasattr(dataset, "size") else tuple(dataset.images.shape[1:3])


class SegwiseBatchDataset(torch.utils.data.Dataset):
    """segwise's batched path split across DataLoader workers: item k is the whole augmented batch k."""

    def __init__(self, batches: Batches, seed: int) -> None:
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))
        count = batches.batches_per_epoch(drop_last=True)
        self.batches, self.seed = batches, seed
        self.indices = [order[k * BATCH : (k + 1) * BATCH] for k in range(count)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + k)
        images, masks = self.batches.prepare(self.indices[k])
        return self.batches.augment(images, masks, "default", generator)


def segwise_workers_epoch(batches: Batches, workers: int, seed: int) -> int:
    loader = torch.utils.data.DataLoader(
        SegwiseBatchDataset(batches, seed), batch_size=None, num_workers=workers
    )
    seen = 0
    for x, masks in loader:
        seen += len(x)
        assert x.shape[1] == 3 and masks.max() <= IGNORE_INDEX
    return seen


def segwise_epoch(batches: Batches, seed: int) -> int:
    generator = torch.Generator().manual_seed(seed)
    seen = 0
    for images, masks in batches.epoch(generator, drop_last=True):
        x, masks = batches.augment(images, masks, "default", generator)
        seen += len(masks)
    assert x.shape[1] == 3 and masks.max() <= IGNORE_INDEX
    return seen


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers, joined each epoch)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="epochs per side (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the peers (default 2)")
    args = parser.parse_args()
    if not (DATA / "train").is_dir():
        print(f"skipped: {DATA} not found (CamVid 11-class data, see ../shared/datasets/README.md)")
        return

    # what `segwise train` does on a CPU; process-wide, so the peers (their main process, and their
    # workers, forked from it) get it too
    keep_freed_memory()
    start = time.perf_counter()
    load_data(DATA, use_cache=False)  # what every run would pay without the cache: decode + resize
    decode_seconds = time.perf_counter() - start
    load_data(DATA)  # writes the cache entry if it is missing
    start = time.perf_counter()
    data = load_data(DATA)
    cached_seconds = time.perf_counter() - start
    height, width = data.size
    imagenet = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    batches = Batches(data.train_images, data.train_masks, BATCH, *imagenet, torch.device("cpu"))
    mean, std = batches.mean, batches.std  # 1×3×1×1 on the 0..255 scale, shared by every side
    transform = albumentations_default(height, width, fill=mean.flatten().tolist())
    sides = {
        "segwise: cache + augment_batch, main process": lambda seed: segwise_epoch(batches, seed),
        f"segwise: cache + augment_batch, {args.workers} workers": lambda seed: segwise_workers_epoch(
            batches, args.workers, seed
        ),
        f"albumentations, decode files, {args.workers} workers": lambda seed: peer_epoch(
            FileDataset(data.train_pairs, data.size, transform), args.workers, seed, mean, std
        ),
        f"albumentations, decoded arrays, {args.workers} workers": lambda seed: peer_epoch(
            ArrayDataset(data.train_images, data.train_masks, transform), args.workers, seed, mean, std
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for run in sides.values():  # warm-up: page cache, thread pools, allocator
        run(0)
    for trial in range(args.trials):
        for name, run in sides.items():  # interleaved
            start, start_cpu = time.perf_counter(), cpu_seconds()
            seen = run(trial + 1)
            rates[name].append(seen / (time.perf_counter() - start))
            cpu[name].append((cpu_seconds() - start_cpu) * 1e3 / seen)

    ours_name = next(iter(sides))
    ours = statistics.median(rates[ours_name])
    print(
        f"CamVid train: {len(data.train_images)} pairs at {height}×{width}, batch {BATCH}, preset default; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, albumentations {A.__version__}, CPU"
    )
    print(
        f"segwise load_data: decoding (no cache) {decode_seconds:.1f}s, from the cache {cached_seconds:.2f}s\n"
    )
    # "paired": the median over trials of segwise's rate over this pipeline's rate in the same round,
    # run seconds apart; it cancels the host's slow spells, which span neighbouring trials
    print(
        "| pipeline | samples/s (median) | all trials | segwise main process / this | paired | "
        "CPU ms per sample |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        trials = ", ".join(f"{v:.0f}" for v in values)
        paired = statistics.median(a / b for a, b in zip(rates[ours_name], values, strict=True))
        print(
            f"| {name} | {median:.1f} | {trials} | {ours / median:.2f}× | {paired:.2f}× | "
            f"{statistics.median(cpu[name]):.1f} |"
        )


if __name__ == "__main__":
    main()
