"""The bit-cut dropout: exactly nn.Dropout's distribution and scaling, seeded, in both networks."""
import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.networks.alexnet_cifar import AlexNetCifar
from pipelines.layers import BitDropout, batch_part, bit_fields, random_bytes
from pipelines.networks.simple_cnn import SimpleCNN


def test_bit_fields_are_the_fewest_bits_that_make_p_exact():
    assert bit_fields(0.5) == (1, 1) and bit_fields(0.25) == (2, 1) and bit_fields(0.75) == (2, 3)
    assert bit_fields(0.3125) == (4, 5) and bit_fields(3 / 256) == (8, 3)
    assert bit_fields(0.1) is None and bit_fields(0.0) == (1, 0)


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_the_mask_drops_share_p_scales_the_rest_and_its_elements_are_independent(p):
    torch.manual_seed(3)
    n = 2_000_000
    y = BitDropout(p).train()(torch.ones(n))
    kept = y != 0
    assert torch.all(y[kept] == torch.tensor(1 / (1 - p)))
    dropped = 1 - kept.float().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n), dropped
    # Neighbours share a random byte (p = 0.25: four elements per byte): still independent.
    d = ~kept
    for lag in (1, 2, 3, 4, 7):
        both = (d[:-lag] & d[lag:]).float().mean().item()
        assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n), (lag, both)


def test_random_bytes_use_every_bit_evenly():
    torch.manual_seed(0)
    b = random_bytes(700_000)
    bits = ((b.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).float().mean(0)
    assert torch.all((bits - 0.5).abs() < 0.005), bits   # the int64's always-0 top bit is never used


def test_forward_and_backward_are_inverted_dropout_and_seeded():
    x = torch.randn(64, 32, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    d = BitDropout(0.25).train()
    torch.manual_seed(5)
    y = d(x)
    assert y.is_contiguous(memory_format=torch.channels_last)   # the layout the convolution left
    mask = (y / x).detach()
    kept = mask != 0
    assert 0.7 < kept.float().mean() < 0.8 and torch.allclose(mask[kept], torch.tensor(4 / 3))
    y.backward(torch.ones_like(y))
    assert torch.allclose(x.grad, mask)
    torch.manual_seed(5)
    assert torch.equal(d(x), y)                  # same seed, same mask
    assert not torch.equal(d(x), y)              # the stream moved on: another mask
    assert torch.equal(d.eval()(x), x)           # eval mode: nothing dropped, nothing scaled


def test_bf16_stays_bf16_and_other_probabilities_fall_back_to_torchs_dropout():
    x = torch.randn(128, 2048, dtype=torch.bfloat16)
    y = BitDropout(0.5).train()(x)
    assert y.dtype == torch.bfloat16 and set(torch.unique(y[x != 0] / x[x != 0]).tolist()) == {0.0, 2.0}
    # 4/3 is not a bf16 number: the kept elements are x * 4/3 rounded once, not x * bf16(4/3).
    z = torch.randn(4096, dtype=torch.bfloat16)
    y = BitDropout(0.25).train()(z)
    kept = y != 0
    assert torch.equal(y[kept], (z[kept].float() * (4 / 3)).to(torch.bfloat16))
    torch.manual_seed(1)
    a = BitDropout(0.1).train()(x.float())
    torch.manual_seed(1)
    assert torch.equal(a, F.dropout(x.float(), 0.1, True))
    with pytest.raises(ValueError, match=r"dropout probability 1: allowed are 0 <= p < 1"):
        BitDropout(1)


@pytest.mark.parametrize("p", [0.25, 0.5, 0.1])   # 0.1: torch's dropout behind it
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_each_rank_drops_its_rows_of_the_mask_one_process_draws(p, layout):
    # Three ranks, a global batch of 7 (slices of 3, 2 and 2 rows): each rank's output is its rows of
    # one process's output, and each rank's generator ends where that process's does.
    d = BitDropout(p).train()
    x = torch.randn(7, 3, 4, 5).contiguous(memory_format=layout)
    torch.manual_seed(0)
    whole, after = d(x), torch.get_rng_state()
    for rank in range(3):
        torch.manual_seed(0)
        with batch_part(rank, 3, len(x)):
            mine = d(x[rank::3].contiguous(memory_format=layout))
        assert torch.equal(mine, whole[rank::3]) and torch.equal(torch.get_rng_state(), after)
    with batch_part(1, 3, len(x)), pytest.raises(RuntimeError, match="an input of 3 rows under batch_part"
                                                 r"\(rank=1, world=3, rows=7\): this process's slice holds 2"):
        d(x[:3])


def test_both_networks_use_it_and_keep_their_state_dict_keys():
    cnn, alex = SimpleCNN(), AlexNetCifar()
    assert [type(m).__name__ for m in (cnn.drop1, cnn.drop2, alex.classifier[0], alex.classifier[3])] == ["BitDropout"] * 4
    assert (cnn.drop1.p, cnn.drop2.p, alex.classifier[0].p) == (0.25, 0.5, 0.5)
    assert list(cnn.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight",
                                      "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [k for k in alex.state_dict() if k.startswith("classifier")] == [
        "classifier.1.weight", "classifier.1.bias", "classifier.4.weight", "classifier.4.bias",
        "classifier.6.weight", "classifier.6.bias"]
