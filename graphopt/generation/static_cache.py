"""The decode slots' KV cache: one tensor [2, L, slots, Hkv, width, D] allocated once (KVLayout: the
heads and dtype of the generation graph), slot b's position j at [:, :, b, :, j]. Prefill writes a
prompt's K/V into its slot, a decode step one position per row; the graph reads views of it (the
first rows, the first positions): nothing is copied to read it."""
from __future__ import annotations

import torch
from torch import Tensor

from graphopt.scoring.prefix_cache import KVLayout


class StaticCache:
    def __init__(self, layout: KVLayout, slots: int, width: int, device="cpu"):
        self.layout = layout
        self.kv = layout.empty(slots, width, device)  # [2, L, slots, Hkv, width, D]

    @property
    def slots(self) -> int:
        return self.kv.shape[2]

    @property
    def width(self) -> int:
        return self.kv.shape[4]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def fits(self, slots: int, width: int, layout: KVLayout, device) -> bool:
        return (self.slots == slots and self.width >= width and self.layout == layout
                and self.kv.device == torch.device(device))

    def view(self, rows: int, positions: int) -> Tensor:
        """Rows 0 .. rows - 1, positions 0 .. positions - 1: [2, L, rows, Hkv, positions, D] (a view)."""
        return self.kv[:, :, :rows, :, :positions]

    def slot(self, b: int, positions: int) -> Tensor:
        """Slot b's first positions: [2, L, 1, Hkv, positions, D] (a view)."""
        return self.kv[:, :, b:b + 1, :, :positions]

    def write(self, b: int, start: int, kv: Tensor) -> None:
        """kv [2, L, 1, Hkv, m, D]: slot b's positions start .. start + m - 1."""
        m = kv.shape[4]
        assert start + m <= self.width, (start, m, self.width)
        self.kv[:, :, b:b + 1, :, start:start + m] = kv

    def write_step(self, rows: Tensor, positions: Tensor, kv: Tensor) -> None:
        """A decode step's K/V kv [2, L, R, Hkv, 1, D] (R >= every row named): row rows[i] at position
        positions[i] (both [n] int64)."""
        # two advanced indices apart put their dim first: the target is [n, 2, L, Hkv, D]
        self.kv[:, :, rows, :, positions] = kv[:, :, rows, :, 0].permute(2, 0, 1, 3, 4).to(self.kv.dtype)
