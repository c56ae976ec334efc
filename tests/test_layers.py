"""pipelines/layers.py beyond the dropout: depthwise convolutions with float32 gradients under CPU
bf16 autocast (autocast's own forward pass, exact float32 gradients, the same parameters and state
dict), and the identity that hands its gradient back in channels-last memory (the same numbers)."""
import copy

import pytest
import torch
from torch import nn

import pipelines.networks.simple_cnn as simple_cnn
from pipelines.layers import DepthwiseConv2d, channels_last_grad, fp32_depthwise_backward
from pipelines.networks.backbone import BackboneClassifier


def _pair(k: int, stride: int, bias: bool):
    torch.manual_seed(0)
    plain = nn.Conv2d(24, 24, k, stride, k // 2, groups=24, bias=bias)
    ours = copy.deepcopy(plain)
    assert fp32_depthwise_backward(ours) == 1 and type(ours) is DepthwiseConv2d
    return plain, ours


@pytest.mark.parametrize("k,stride,bias", [(3, 1, False), (5, 2, False), (3, 2, True)])
def test_forward_is_autocasts_and_gradients_are_float32_of_the_same_bf16_operands(k, stride, bias):
    plain, ours = _pair(k, stride, bias)
    x = torch.randn(3, 24, 13, 13).to(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = plain(xa), ours(xb)
    assert ya.dtype == yb.dtype == torch.bfloat16 and torch.equal(ya, yb)
    g = torch.randn(ya.shape).bfloat16().float()
    yb.float().backward(g)
    ya.float().backward(g)

    # The reference: the same bf16-rounded operands, every step in float32.
    ref = copy.deepcopy(plain)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.bfloat16().float())
        ref.zero_grad()
    xr = x.bfloat16().float().requires_grad_()
    ref(xr).backward(g)
    assert ours.weight.grad.dtype == torch.float32
    assert torch.equal(ours.weight.grad, ref.weight.grad)
    assert torch.equal(xb.grad, xr.grad)
    if bias:
        assert torch.allclose(ours.bias.grad, ref.bias.grad, rtol=1e-6, atol=1e-6)
    # bf16 autocast's own backward rounds to bf16 on the way: farther from the float32 gradient.
    assert (plain.weight.grad - ref.weight.grad).abs().max() > 0


def test_without_autocast_or_gradients_it_is_a_plain_convolution():
    plain, ours = _pair(3, 1, True)
    x = torch.randn(2, 24, 9, 9)
    assert torch.equal(plain(x), ours(x))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(plain(x), ours(x))


def test_the_backbone_keeps_its_parameters_and_state_dict_and_only_depthwise_layers_change():
    torch.manual_seed(1)
    model = BackboneClassifier("efficientnet_lite0")
    depthwise = [m for m in model.modules() if type(m) is DepthwiseConv2d]
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert len(depthwise) == 16 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert all(m.groups == 1 for m in convs)
    torch.manual_seed(1)
    again = BackboneClassifier("efficientnet_lite0")
    state = model.state_dict()
    assert list(state) == list(again.state_dict())
    again.load_state_dict(state)
    x = torch.rand(2, 3, 64, 64).to(memory_format=torch.channels_last)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_channels_last_grad_is_the_identity_with_a_channels_last_gradient():
    leaf = torch.randn(2, 3, 4, 5, requires_grad=True)
    x = leaf * 1.0
    y = channels_last_grad(x)
    assert torch.equal(y, x)
    seen = {}
    y.register_hook(lambda g: seen.setdefault("out", g))
    x.register_hook(lambda g: seen.setdefault("in", g))
    (y.flatten(1) * torch.arange(60.0)).sum().backward()
    assert seen["out"].is_contiguous()   # what the flatten hands back: NCHW order
    assert seen["in"].is_contiguous(memory_format=torch.channels_last) and not seen["in"].is_contiguous()
    assert torch.equal(leaf.grad, torch.arange(60.0).view(1, 3, 4, 5).expand(2, 3, 4, 5))
    with torch.no_grad():
        assert channels_last_grad(x) is x


@pytest.mark.parametrize("hidden", [128, 0])
def test_the_simple_cnn_trains_to_the_same_weights_with_and_without_it(monkeypatch, hidden):
    def train(identity: bool) -> list[torch.Tensor]:
        if identity:
            monkeypatch.setattr(simple_cnn, "channels_last_grad", lambda t: t)
        else:
            monkeypatch.setattr(simple_cnn, "channels_last_grad", channels_last_grad)
        torch.manual_seed(0)
        model = simple_cnn.SimpleCNN(hidden=hidden).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x = torch.randn(16, 1, 28, 28, generator=g).to(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (16,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(train(identity=True), train(identity=False)))
