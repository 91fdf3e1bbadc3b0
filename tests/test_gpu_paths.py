"""What a GPU run depends on, shown on the CPU: colour-table positions under a perturbed matmul (TF32),
the precision chosen without emulated bf16, the fp16 step with a GradScaler, the training loss read
back every few steps instead of every step, the out-of-memory fallbacks of TTA and sliding window, and
(2 gloo processes) sharded, per-rank-seeded user transforms and a plan decided once on rank 0."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segwise.data.augment import PRESETS, Augment, augment_batch

from .conftest import TINY


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


# ---- precision: bf16 only where native, fp16 with a GradScaler otherwise


@pytest.mark.parametrize("native", [True, False], ids=["ampere", "v100"])
def test_auto_precision_on_a_gpu_counts_only_native_bf16(monkeypatch, native):
    from segwise.engine import devices

    asked = {}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked["including_emulation"] = including_emulation
        return native or including_emulation  # a V100 emulates bf16: True only when emulation counts

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cuda = torch.device("cuda")
    assert devices.autocast_dtype(cuda, "auto") == (torch.bfloat16 if native else torch.float16)
    assert asked == {"including_emulation": False}
    assert devices.autocast_dtype(cuda, "bf16") == torch.bfloat16  # asked for: given
    assert devices.autocast_dtype(cuda, "fp16") == torch.float16


def test_older_torch_without_the_emulation_argument_asks_the_compute_capability(monkeypatch):
    from segwise.engine import devices

    def old_is_bf16_supported() -> bool:
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_is_bf16_supported)
    for capability, dtype in (((7, 0), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert devices.autocast_dtype(torch.device("cuda"), "auto") == dtype


def tiny_step(scaler: torch.amp.GradScaler, **options):
    from segwise.engine.step import Step

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, Step(model, torch.nn.CrossEntropyLoss(), optimizer, scaler, None, False, **options)


def test_the_fp16_step_scales_the_loss_and_skips_an_overflowing_update():
    """The fp16 path's logic with a real GradScaler (on the CPU: the same class CUDA uses): the step
    unscales before clipping, steps on finite gradients, and skips the update and halves the scale
    on an overflow, as the trainer's fp16 runs need."""
    model, step = tiny_step(torch.amp.GradScaler("cpu", init_scale=2.0**10), clip_grad_norm=1.0)
    x, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4))
    before = [p.detach().clone() for p in model.parameters()]
    step.train(model, x, masks)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert step.scaler.get_scale() == 2.0**10
    after_good = [p.detach().clone() for p in model.parameters()]
    step.train(model, x * float("inf"), masks)  # an fp16 overflow: infinite gradients
    assert all(torch.equal(a, b) for a, b in zip(after_good, model.parameters(), strict=True))
    assert step.scaler.get_scale() == 2.0**9


def test_cuda_kernel_policy_is_tf32_and_benchmark_unless_fp32_or_deterministic(monkeypatch):
    from segwise.engine import devices

    kept = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    try:
        devices.set_kernel_policy(torch.device("cpu"), "auto", False)
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark) == kept[::2]
        devices.set_kernel_policy(torch.device("cuda"), "auto", False)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        devices.set_kernel_policy(torch.device("cuda"), "fp32", True)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.set_float32_matmul_precision(kept[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = kept[1:]


# ---- no host synchronisation in the steady-state step


def test_training_steps_read_nothing_back_and_the_running_loss_is_read_every_few_steps(monkeypatch):
    from segwise.engine import distributed
    from segwise.engine.step import RunningLoss

    model, step = tiny_step(torch.amp.GradScaler("cpu", enabled=False))

    def no_reading(*values, device):
        raise AssertionError("a training step read its loss back")

    monkeypatch.setattr(distributed, "all_sum", no_reading)
    running, losses = RunningLoss(torch.device("cpu"), every=3), []
    generator = torch.Generator().manual_seed(1)
    for index in range(7):
        x, masks = (
            torch.randn(index + 1, 3, 4, 4, generator=generator),
            torch.randint(0, 2, (index + 1, 4, 4)),
        )
        loss = step.train(model, x, masks)
        assert isinstance(loss, torch.Tensor) and not loss.requires_grad
        losses.append(float(loss) * (index + 1))
        running.add(loss, index + 1)
        assert running.due == ((index + 1) % 3 == 0)
    total, count = running.read()
    assert count == sum(range(1, 8)) and total == pytest.approx(sum(losses), rel=1e-12)
    running.add(torch.tensor(float("nan")), 1)
    running.add(torch.tensor(1.0), 1)
    assert not torch.isfinite(torch.tensor(running.read()[0]))  # a NaN step is not forgotten


def test_dice_counts_without_a_boolean_mask_equal_bincount():
    from segwise.losses import _softmax_counts

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 9, 11, generator=generator)
    target = torch.randint(0, 5, (3, 9, 11), generator=generator)
    target[0, :4] = 255  # ignored
    target[target == 3] = 2  # a class with no pixels
    _, _, actual = _softmax_counts(logits, target, 255)
    valid = target != 255
    assert torch.equal(actual, torch.bincount(target[valid], minlength=5).float())


def test_weighted_cross_entropy_without_a_boolean_mask_equals_the_old_value():
    from segwise.losses import CrossEntropyLoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=generator)
    target = torch.randint(0, 4, (2, 8, 8), generator=generator)
    target[1, 2:5] = 255
    weights = [0.5, 2.0, 1.0, 3.0]
    loss = CrossEntropyLoss(class_weights=weights, ignore_index=255)(logits, target)
    valid = target != 255
    old = (
        torch.nn.functional.cross_entropy(
            logits, target, torch.tensor(weights), ignore_index=255, reduction="sum"
        )
        / torch.tensor(weights)[target[valid]].sum()
    )
    assert torch.allclose(loss, old, rtol=1e-6)
    assert torch.allclose(
        loss, torch.nn.functional.cross_entropy(logits, target, torch.tensor(weights), ignore_index=255)
    )


# ---- torchrun: 2 gloo processes on the CPU


class DrawingTransform:
    """A user transform (albumentations' interface) that writes one random draw into channel 1 and
    leaves the sample's number (channel 0) as it is."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        image = image.copy()
        image[..., 1] = self.rng.integers(0, 256)
        return {"image": image, "mask": mask}


def _user_transform_epochs(process) -> dict:
    """Sample numbers and draws of one epoch of PerSampleBatches, without and with a worker."""
    from segwise.data.augment import PerSampleBatches
    from segwise.engine.batches import Batches

    count = 12
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 8, 8, 3)).copy()
    batches = Batches(
        images, np.zeros((count, 8, 8), np.uint8), 3, [0.0] * 3, [1.0] * 3, torch.device("cpu"), process
    )
    result = {}
    for workers in (0, 1):
        transformed = PerSampleBatches(batches, DrawingTransform(), workers=workers)
        seen, draws = [], []
        for batch, _ in transformed.epoch(torch.Generator().manual_seed(7), drop_last=True):
            seen += batch[:, 0, 0, 0].long().tolist()
            draws += batch[:, 1, 0, 0].long().tolist()
        result[f"workers={workers}"] = {"seen": seen, "draws": draws}
    return result


def _preset_draws(process) -> dict:
    """The on-device presets' draws on one image every process has, and the shared generator after."""
    from segwise.engine import distributed

    shared = torch.Generator().manual_seed(7)
    draws = distributed.augmentation_generator(shared, process, seed=7, epoch=3)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    out, _ = augment_batch(image, torch.zeros(1, 16, 16, dtype=torch.long), "heavy", draws)
    return {"augmented": out.sum().item(), "shared_next": torch.rand(1, generator=shared).item()}


def _plans(process, data: str) -> dict:
    """The plan this process gets in the launch, with a probe that measures differently on each
    process (as two GPUs with different free memory do): planning alone, rank 0 gets 2, rank 1 4."""
    from segwise.engine import plan

    def probe(config, data_set, device):
        return (2 if process.rank == 0 else 4), "a probe of this process's own"

    plan.probe_batch_size = probe
    overrides = {"model": {"encoder": TINY["encoder"], "options": TINY["options"]}, "train": {"epochs": 1}}
    config, given = plan.resolve_config(None, overrides)
    decided = plan.plan_once(data, config, given, process, "cpu")
    return {
        "batch_size": decided.config.train.batch_size,
        "size": list(decided.data.size),
        "train_images": [str(path) for path in decided.data.train_images],
        "notes": decided.notes,
    }


def _gloo_rank(rank: int, folder: str, data: str) -> None:
    import json

    import torch.distributed as dist

    from segwise.engine import distributed

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    process = distributed.Process(rank, 2, rank)
    result = {**_user_transform_epochs(process), **_preset_draws(process), **_plans(process, data)}
    dist.destroy_process_group()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def gloo_ranks(shapes_data, tmp_path_factory) -> list[dict]:
    """What each of 2 gloo processes saw (one launch shared by the tests below)."""
    import json

    folder = tmp_path_factory.mktemp("gloo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.multiprocessing.spawn(_gloo_rank, args=(str(folder), str(shapes_data)), nprocs=2)
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow  # the launch: 2 processes that import torch, plan and run a DataLoader worker
@pytest.mark.parametrize("workers", [0, 1])
def test_user_transform_ranks_see_disjoint_samples_and_draw_differently(gloo_ranks, workers):
    """PerSampleBatches under torchrun: each process its shard of the one shuffled order (together
    every sample once), and its own seed for the workers and the transform."""
    zero, one = (rank[f"workers={workers}"] for rank in gloo_ranks)
    assert len(zero["seen"]) == len(one["seen"]) == 6
    assert sorted(zero["seen"] + one["seen"]) == list(range(12))
    assert zero["draws"] != one["draws"]


@pytest.mark.slow
def test_preset_augmentation_draws_differ_between_ranks_and_the_shared_order_stays_shared(gloo_ranks):
    """Each process augments with its own draws; the shared generator (the epoch's order) is not
    drawn from, so its order stays the one-process run's (test_distributed compares the two)."""
    assert gloo_ranks[0]["augmented"] != gloo_ranks[1]["augmented"]
    untouched = torch.rand(1, generator=torch.Generator().manual_seed(7)).item()
    assert gloo_ranks[0]["shared_next"] == gloo_ranks[1]["shared_next"] == untouched


@pytest.mark.slow
def test_every_rank_gets_rank_zeros_plan_even_when_its_own_probe_disagrees(gloo_ranks):
    zero, one = gloo_ranks
    assert zero["batch_size"] == one["batch_size"] == 2
    assert zero["size"] == one["size"] and zero["train_images"] == one["train_images"]
    assert zero["notes"] == one["notes"]


def test_the_gpu_probe_budgets_from_free_memory_not_the_cards_total(monkeypatch):
    """A card of 10 GB with 1 GB free (another process holds the rest): the batch whose step peaks
    under 80 % of the free gigabyte, not of the ten."""
    from segwise.engine import plan

    gigabyte, per_image = 10**9, 10**8
    peak = {"bytes": 0}

    def probe_step(model, batch, shape, dtype, device):
        peak["bytes"] = batch * per_image

    monkeypatch.setattr(plan, "_probe_step", probe_step)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (gigabyte, 10 * gigabyte))
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=10 * gigabyte)
    )
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peak["bytes"])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    assert plan._gpu_batch(None, (3, 64, 64), None, torch.device("cuda"), cap=64) == 8  # 800 MB ≤ 0.8 GB


# ---- inference: out-of-memory fallback, the ONNX provider


class SmallGpu(torch.nn.Module):
    """A per-pixel model that runs out of GPU memory on more than `fits` samples at once."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fits, self.calls = torch.nn.Conv2d(3, 4, 3, padding=1), fits, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        if len(x) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory for {len(x)} samples")
        return self.conv(x)


def test_tta_halves_a_pass_that_does_not_fit_and_gives_the_same_probabilities():
    from segwise.inference.tta import predict_tta, views_for

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    expected = predict_tta(SmallGpu(fits=100), images, views_for("d4"))
    small = SmallGpu(fits=3)
    got = predict_tta(small, images, views_for("d4"))
    assert torch.allclose(got, expected, atol=1e-6)
    assert small.calls[:3] == [16, 8, 4] and max(small.calls[3:]) == 2  # halved once for all, then kept
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predict_tta(SmallGpu(fits=0), images, views_for("flips"))  # one sample does not fit: nothing left


def test_sliding_window_halves_a_batch_of_tiles_that_does_not_fit():
    from segwise.inference.sliding import predict_sliding

    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(1)) * 255
    big, small = SmallGpu(fits=100), SmallGpu(fits=3)
    expected = predict_sliding(lambda tiles: big(tiles).softmax(1), image, (16, 16), batch_size=8)
    got = predict_sliding(lambda tiles: small(tiles).softmax(1), image, (16, 16), batch_size=8)
    assert torch.allclose(got, expected, atol=1e-6)
    assert small.calls[:3] == [8, 4, 2] and max(small.calls[3:]) == 2


class FakeSession:
    def __init__(self, path, options, providers) -> None:
        self.asked = providers  # a GPU provider that cannot start is dropped, as onnxruntime does
        self.running = [name for name in providers if name != FakeOnnxRuntime.broken]

    def get_providers(self):
        return self.running

    def get_inputs(self):
        return [SimpleNamespace(name="images", shape=["n", 3, "h", "w"])]

    def get_outputs(self):
        return [SimpleNamespace(name="logits", shape=["n", 2, "h", "w"])]


class FakeOnnxRuntime:
    broken = None
    SessionOptions = SimpleNamespace
    InferenceSession = FakeSession

    @staticmethod
    def get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("broken", [None, "CUDAExecutionProvider"], ids=["cuda", "cuda-fails"])
def test_onnx_backend_prefers_the_cuda_provider_and_says_which_one_runs(monkeypatch, capsys, broken):
    from segwise.inference import backends

    monkeypatch.setattr(backends, "import_onnxruntime", lambda: FakeOnnxRuntime)
    monkeypatch.setattr(FakeOnnxRuntime, "broken", broken)
    model = backends.OnnxRuntimeModel("model.onnx", 3, 2, torch.device("cuda"))
    assert model.session.asked == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    said = capsys.readouterr().err.strip()
    if broken:
        assert model.provider == "CPUExecutionProvider"
        assert said.startswith("segwise: onnxruntime runs model.onnx on CPUExecutionProvider (its CUDA")
    else:
        assert said == "segwise: onnxruntime runs model.onnx on CUDAExecutionProvider"
    cpu = backends.OnnxRuntimeModel("model.onnx", 3, 2, torch.device("cpu"))
    assert cpu.session.asked == ["CPUExecutionProvider"] and cpu.provider == "CPUExecutionProvider"
