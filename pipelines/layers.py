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
"""
from __future__ import annotations

import sys

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
        if self.table is None:
            return F.dropout(x, self.p, True)
        n = x.numel()
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
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            b, c, h, w = x.shape
            mask = mask.view(b, h, w, c).permute(0, 3, 1, 2)
        else:
            mask = mask.view(x.shape)
        return x * mask if exact else (x * mask).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"
