"""The fine-tuning recipe: no weight decay on biases and norms, a pretrained encoder's batch-norm
statistics kept at small batches."""

import timm
import torch
from safetensors.torch import load_file, save_file

import segwise
from segwise.engine.schedules import build_optimizer, encoder_decoder_groups

from .conftest import TINY


def test_biases_and_norm_scales_take_no_weight_decay():
    model = segwise.create_model(
        "unet", encoder="test_resnet", num_classes=3, **{"decoder_channels": [8] * 5}
    )
    groups = encoder_decoder_groups(model, 0.1)
    assert [g["name"] for g in groups] == ["encoder", "encoder_no_decay", "decoder", "decoder_no_decay"]
    optimizer = build_optimizer(groups, "adamw", 1e-3, 0.05)
    decays = [g["weight_decay"] for g in optimizer.param_groups]
    assert decays == [0.05, 0.0, 0.05, 0.0]
    for group in optimizer.param_groups:
        assert all((p.ndim <= 1) == group["name"].endswith("_no_decay") for p in group["params"])
    counted = sum(p.numel() for g in groups for p in g["params"])
    assert counted == sum(p.numel() for p in model.parameters())  # every parameter in one group


def batch_norms(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("running_mean")}


def test_kept_norm_statistics_hold_while_their_scales_learn():
    model = segwise.create_model(
        "unet", encoder="test_resnet", num_classes=2, **{"decoder_channels": [8] * 5}
    )
    model.keep_encoder_norm_statistics()
    before = batch_norms(model.encoder)
    model.train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert all(torch.equal(before[k], v) for k, v in batch_norms(model.encoder).items())
    decoder_norms = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.training for m in decoder_norms)  # the decoder's norms start from nothing: they learn
    scales = [m.weight for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert scales and all(s.grad is not None for s in scales)


def test_a_pretrained_encoder_trained_at_a_small_batch_keeps_its_statistics(shapes_data, tmp_path):
    weights = tmp_path / "test_resnet.safetensors"
    reference = timm.create_model("test_resnet")
    for module in reference.modules():  # statistics a training batch would visibly move
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(0.5)
    save_file(reference.state_dict(), str(weights))
    options = {**TINY, "batch_size": 2}
    result = segwise.train(
        shapes_data, runs_dir=tmp_path, epochs=1, encoder_weights=str(weights), progress=False, **options
    )
    trained = load_file(str(result.run_dir / "model.safetensors"))
    means = [v for k, v in trained.items() if k.startswith("encoder.") and k.endswith("running_mean")]
    assert means and all(torch.all(m == 0.5) for m in means)
