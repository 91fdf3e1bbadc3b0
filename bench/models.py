"""Benchmark one training step (forward + backward) of each architecture against segmentation-models-pytorch.

Run from the repository root: `.venv/bin/python bench/models.py [--repeats 5] [--size 256] [--batch 4]`
(needs segmentation-models-pytorch). Same encoder (resnet34, random weights), same input, same process,
fp32 on the CPU, training mode; the two models alternate (peer, segwise, segwise, peer, ...) so that load
from other jobs hits both alike, and each step is timed in process CPU time. Prints a Markdown table of
median times and the ratio smp time / segwise time (> 1 means segwise is faster). `--plain-unet` runs
segwise's U-Net and U-Net++ without their fast path (models/phase_conv.py), to see what it buys.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import segmentation_models_pytorch as smp  # noqa: E402

import segwise  # noqa: E402
from segwise.models.unet import UnetBlock  # noqa: E402

# segwise architecture -> smp class; both at their defaults (DeepLabV3 at output stride 8, V3+ at 16,
# PSPNet on the first three encoder stages, PAN at output stride 16).
PAIRS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "pspnet": "PSPNet",
    "segformer": "Segformer",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "dpt": "DPT",
}
# Architectures on a plain ViT's tokens run on this timm ViT instead of `--encoder` (smp names it "tu-…"
# and needs dynamic_img_size=True for sizes other than 224).
VIT_ENCODERS = {"dpt": "vit_small_patch16_224"}


def training_step(model: torch.nn.Module, x: torch.Tensor) -> float:
    """CPU seconds of this process (all threads) for one step: on a machine shared with other jobs, wall
    time mostly measures waiting for a core; CPU time measures the work."""
    start = time.process_time()
    model.zero_grad(set_to_none=True)
    model(x).mean().backward()
    return time.process_time() - start


def compare(arch: str, encoder: str, x: torch.Tensor, classes: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    peer_encoder, peer_options = encoder, {}
    if arch in VIT_ENCODERS:
        encoder = VIT_ENCODERS[arch]
        peer_encoder, peer_options = f"tu-{encoder}", {"dynamic_img_size": True}
    peer = getattr(smp, PAIRS[arch])(
        peer_encoder, encoder_weights=None, classes=classes, **peer_options
    ).train()
    ours = segwise.create_model(arch, encoder=encoder, num_classes=classes).train()
    with torch.no_grad():
        assert peer(x).shape == ours(x).shape, arch
    training_step(peer, x), training_step(ours, x)  # warm-up (allocator, thread pool)
    times: dict[str, list[float]] = {"peer": [], "ours": []}
    for i in range(repeats):  # interleaved, and who goes first alternates: A B, B A, A B, ...
        for name in ("peer", "ours") if i % 2 == 0 else ("ours", "peer"):
            times[name].append(training_step(peer if name == "peer" else ours, x))
    return statistics.median(times["peer"]), statistics.median(times["ours"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--arch", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--plain-unet",
        action="store_true",
        help="segwise's U-Net blocks without their phase-convolution fast path (UnetBlock.fast = False)",
    )
    args = parser.parse_args()
    UnetBlock.fast = not args.plain_unet
    if args.threads:  # one thread: no idle spinning of a thread pool in the CPU times on a busy machine
        torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(
        f"forward+backward, {args.encoder}, {args.batch}×3×{args.size}×{args.size}, fp32 CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, smp {smp.__version__}, "
        f"U-Net fast path {'off' if args.plain_unet else 'on'}, "
        f"median CPU time of {args.repeats} after one warm-up step each\n"
    )
    print(
        "| architecture | smp class | smp median (CPU ms) | segwise median (CPU ms) | ratio (smp / segwise) |"
    )
    print("|---|---|---:|---:|---:|")
    for arch in args.arch:
        peer, ours = compare(arch, args.encoder, x, classes=12, repeats=args.repeats)
        label = f"{arch} ({VIT_ENCODERS[arch]})" if arch in VIT_ENCODERS else arch
        print(
            f"| {label} | {PAIRS[arch]} | {peer * 1e3:.0f} | {ours * 1e3:.0f} | {peer / ours:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
