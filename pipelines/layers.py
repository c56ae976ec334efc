"""Dropout whose mask is cut from random bits: one random byte serves several elements.

torch's CPU dropout draws one Bernoulli number per element from a generator that runs on one
thread (about 155 M elements/s measured, no faster on two threads), so in the Simple CNN the
dropout after the pool, which does no arithmetic, took more of the forward pass than any
convolution. A drop probability p = j / 2^m needs only m random bits per element (p = 0.5: one;
p = 0.25: two). Here the generator fills 64-bit words (`random_()` on int64: 63 random bits, the
top one always 0, so 7 whole bytes of each word are used), and each random byte becomes the mask
of 8 / m elements through a 256-row table: row b holds, for each m-bit field of b, 0 (dropped,
when the field is below j: probability exactly p) or 1 (kept, then scaled by 1 / (1 - p) as
inverted dropout scales). One generator call per 28 elements at p = 0.5, one table lookup per byte.

The mask comes from torch's global generator, so the same seed gives the same masks; but it is
another random stream than nn.Dropout's, so a network trained with it follows other numbers (its
accuracy stays within the seeds' noise: docs/speed.md). A p that is not a multiple of 1/256 falls
back to torch's own dropout. In eval mode the input passes unchanged.

Under data parallelism (`batch_part`) each process holds rows rank::world of a global batch. A
BitDropout then draws the mask of the whole batch, as one process would, and keeps its rows: the
ranks together drop exactly what one process drops, and every rank's generator stays in step with
one process's. Random augmentation (pipelines/train/engine.py) draws the same way.

Depthwise convolutions whose gradients are computed in float32 under bf16 autocast on a CPU
(`DepthwiseConv2d`, put in place by `fp32_depthwise_backward`). On CPUs with AVX-512 BF16 and no
AMX, oneDNN runs the bf16 backward of a depthwise convolution through generic grouped kernels
(`brgconv_strided` for the input's gradient, `jit_bf16` for the weights'), several times slower
than its float32 depthwise kernels (`jit_dw`, `jit`), while its bf16 forward kernel (`brdgmm_dw`)
is the fastest form. So the forward pass stays exactly what autocast computes (bf16 input and
weight, bf16 output), and only the backward pass widens the saved bf16 tensors to float32; the
weight's gradient comes out in float32, as the master weight is held. Without autocast, on
another device, or with no gradient wanted, the layer is a plain `nn.Conv2d`.

`channels_last_grad`: the identity, whose gradient is handed back in channels-last memory. A
flatten after a channels-last pooling returns its gradient in NCHW order; max-pooling's backward
then copies its input and indices to that order and back (about a sixth of a Simple CNN training
step on the CPU). The values are the same either way: only where the copy happens moves.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

WORD_BYTES = 7   # the random bytes of an int64 from random_() (the eighth holds the always-0 top bit)
# Where those bytes sit in the word's memory: the top byte is the last one on a little-endian machine.
RANDOM_BYTES = slice(0, WORD_BYTES) if sys.byteorder == "little" else slice(8 - WORD_BYTES, 8)


def bit_fields(p: float) -> tuple[int, int] | None:
    """(m, j): the fewest bits m in {1, 2, 4, 8} with p = j / 2^m exactly; None when there are none."""
    for m in (1, 2, 4, 8):
        j = p * (1 << m)
        if j == int(j):
            return m, int(j)
    return None


def mask_table(m: int, j: int) -> torch.Tensor:
    """(256, 8 / m) float32 of 0 and 1: row b is the keep mask of the 8 / m elements random byte b decides."""
    fields = (torch.arange(256).unsqueeze(1) >> torch.arange(0, 8, m)) & ((1 << m) - 1)
    return (fields >= j).float()


def random_bytes(n: int, device=None) -> torch.Tensor:
    """n uniformly random bytes (uint8) from torch's global generator, seven per int64 it draws."""
    words = torch.empty(-(-n // WORD_BYTES), dtype=torch.int64, device=device).random_()
    return words.view(torch.uint8).view(-1, 8)[:, RANDOM_BYTES].reshape(-1)[:n]


@dataclass(frozen=True)
class BatchPart:
    """Rows rank, rank + world, ... of a global batch of `rows`: one data-parallel process's slice."""
    rank: int
    world: int
    rows: int

    def __len__(self) -> int:
        return len(range(self.rank, self.rows, self.world))

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of `t`, a tensor whose first dimension is the global batch."""
        return t[self.rank::self.world]


_PART: contextvars.ContextVar[Optional[BatchPart]] = contextvars.ContextVar("batch_part", default=None)


@contextlib.contextmanager
def batch_part(rank: int, world: int, rows: int) -> Iterator[Optional[BatchPart]]:
    """Within: random layers see this process's slice of a global batch of `rows` (world > 1), or a
    whole batch (world = 1: nothing changes). Yields the part, None for world = 1."""
    if world == 1:
        yield None
        return
    token = _PART.set(BatchPart(rank, world, rows))
    try:
        yield _PART.get()
    finally:
        _PART.reset(token)


def current_part(batch: int) -> Optional[BatchPart]:
    """The BatchPart in force for an input of `batch` rows, None outside batch_part."""
    part = _PART.get()
    if part is not None and len(part) != batch:
        raise RuntimeError(f"an input of {batch} rows under batch_part(rank={part.rank}, world={part.world}, "
                           f"rows={part.rows}): this process's slice holds {len(part)}")
    return part


class BitDropout(nn.Module):
    """nn.Dropout(p) (inverted: kept elements scaled by 1 / (1 - p)) with its mask from random bits."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p}: allowed are 0 <= p < 1")
        self.p = p
        self.scale = 1 / (1 - p)
        fields = bit_fields(p)
        self.per_byte = 8 // fields[0] if fields else 0
        # Not persistent: the table is derived from p, and the state dict stays nn.Dropout's (empty).
        self.register_buffer("table", mask_table(*fields) if fields else None, persistent=False)
        self._exact: dict[torch.dtype, bool] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        part = current_part(x.shape[0])
        # The mask of the whole batch (under batch_part: of every process's rows), then this input's rows.
        shape = x.shape if part is None else (part.rows, *x.shape[1:])
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if self.table is None:
            if part is None:
                return F.dropout(x, self.p, True)
            ones = torch.ones(shape, dtype=x.dtype, device=x.device)
            if channels_last:
                ones = ones.contiguous(memory_format=torch.channels_last)
            return x * part.take(F.dropout(ones, self.p, True))
        n = math.prod(shape)
        # The scale goes into the table in float32 and wider (torch's dropout multiplies in x's dtype
        # there too) and where x's dtype holds it exactly (p = 0.5: 2); else (p = 0.25 in bf16: 4/3) it
        # multiplies afterwards, each product computed in float32 and rounded once, as torch rounds it.
        exact = self._exact.get(x.dtype)
        if exact is None:
            exact = self._exact[x.dtype] = (x.dtype.itemsize >= 4
                                            or float(torch.tensor(self.scale, dtype=x.dtype)) == self.scale)
        table = self.table.to(x.dtype) * self.scale if exact else self.table.to(x.dtype)
        index = random_bytes(-(-n // self.per_byte), x.device).to(torch.int32)
        mask = table.index_select(0, index).view(-1)[:n]
        # Laid out as x is in memory (channels-last after a convolution), so the product is one pass.
        if channels_last:
            b, c, h, w = shape
            mask = mask.view(b, h, w, c).permute(0, 3, 1, 2)
        else:
            mask = mask.view(shape)
        if part is not None:
            mask = part.take(mask)
        return x * mask if exact else (x * mask).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _DepthwiseBf16(torch.autograd.Function):
    """conv2d in bf16 forward (autocast's arithmetic), gradients in float32."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        xb, wb = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        ctx.save_for_backward(xb, wb)
        ctx.conf = (stride, padding, dilation, groups, x.dtype, None if bias is None else bias.shape)
        return F.conv2d(xb, wb, None if bias is None else bias.to(torch.bfloat16), stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        xb, wb = ctx.saved_tensors
        stride, padding, dilation, groups, x_dtype, bias_shape = ctx.conf
        fmt = torch.channels_last if xb.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        want = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_shape is not None and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.float().contiguous(memory_format=fmt), xb.float().contiguous(memory_format=fmt),
            wb.float().contiguous(memory_format=fmt), list(bias_shape) if bias_shape is not None else None,
            stride, padding, dilation, False, [0, 0], groups, want)
        return (gx.to(x_dtype) if want[0] else None), (gw if want[1] else None), \
            (gb if want[2] else None), None, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d (groups = in = out channels) whose backward runs in float32 under CPU bf16 autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or self.padding_mode != "zeros" or not torch.is_grad_enabled()
                or not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") != torch.bfloat16
                or not (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseBf16.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                        self.groups)


def fp32_depthwise_backward(model: nn.Module) -> int:
    """Make every depthwise nn.Conv2d of model a DepthwiseConv2d, in place (same parameters, same
    state dict); the number of layers changed."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and 1 < m.groups == m.in_channels == m.out_channels:
            m.__class__ = DepthwiseConv2d
            n += 1
    return n


class _ChannelsLastGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last) if grad.dim() == 4 else grad


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """x itself, whose gradient flows back in channels-last memory (4-d tensors)."""
    return _ChannelsLastGrad.apply(x) if torch.is_grad_enabled() and x.requires_grad else x
