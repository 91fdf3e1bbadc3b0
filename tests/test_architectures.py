"""Every registered architecture: any input size, backward, tracing; parameter counts against smp."""

import pytest
import torch

import segwise


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", segwise.list_models())
def test_forward_backward_at_an_odd_size(arch):
    model = segwise.create_model(arch, encoder="test_resnet", num_classes=4)
    out = model(torch.randn(2, 3, 250, 333))
    assert out.shape == (2, 4, 250, 333)
    out.mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize("arch", segwise.list_models())
def test_jit_trace(arch):
    model = segwise.create_model(arch, encoder="test_resnet", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def _ratio_to_smp(arch: str, encoder: str, smp_class: str, **options) -> float:
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = getattr(smp, smp_class)(encoder, encoder_weights=None, classes=1)
    model = segwise.create_model(arch, encoder=encoder, num_classes=1, **options)
    return n_parameters(model) / n_parameters(reference)


def test_fpn_resnet34_parameter_count_matches_smp():
    assert _ratio_to_smp("fpn", "resnet34", "FPN") == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("merge_policy", ["add", "cat"])
def test_fpn_merge_policies(merge_policy):
    model = segwise.create_model(
        "fpn", encoder="test_resnet", num_classes=2, decoder_merge_policy=merge_policy
    )
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 50, 70)).shape == (1, 2, 50, 70)
