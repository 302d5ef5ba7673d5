"""A decode step of fixed shapes, replayed as a CUDA graph on CUDA devices.

With static_shapes the engine runs every step over all slots and the whole static cache, so the step's
inputs can live in buffers allocated once: the engine copies the step's token ids, positions and mask
into them and the step runs on the same addresses each time. On a CUDA device the step (the generation
graph, then the write of each row's new K/V at its position into the cache) is captured once with
torch.cuda.CUDAGraph and replayed: one launch per step instead of one per kernel, which is what a
one-token step of a small model is bound by on a GPU. Elsewhere the same buffers and the same body
run eagerly, so the CPU tests exercise everything but the capture itself.

A free slot's row is run too (fixed shapes): it feeds token 0 at position 0 seeing only itself, and
its K/V land in its own position 0, which the next prompt admitted to that slot overwrites.
"""
from __future__ import annotations

import torch
from torch import Tensor

from graphopt.generation.static_cache import StaticCache


class FixedShapeStep:
    def __init__(self, run, cache: StaticCache, with_logits: bool = False, use_cuda_graph: bool | None = None):
        kv = cache.kv
        S, W, dev = cache.slots, cache.width, kv.device
        self.run, self.cache, self.with_logits = run, cache, with_logits
        self.ids = torch.zeros(S, 1, dtype=torch.long, device=dev)
        self.positions = torch.zeros(S, 1, dtype=torch.long, device=dev)
        self.mask = torch.zeros(S, 1, W + 1, dtype=torch.bool, device=dev)
        self.mask[:, :, W] = True
        self.rows = torch.arange(S, device=dev)
        self.use_cuda_graph = dev.type == "cuda" if use_cuda_graph is None else use_cuda_graph
        self.graph, self.out = None, None
        if self.use_cuda_graph:
            self._capture()

    def _body(self) -> tuple[Tensor, ...]:
        out = self.run(self.ids, self.positions, self.mask, self.rows, self.cache.kv)
        self.cache.write_step(self.rows, self.positions[:, 0], out[1])  # every row at its position
        return (out[0], out[2]) if self.with_logits else (out[0],)

    def _capture(self) -> None:
        side = torch.cuda.Stream(device=self.ids.device)
        side.wait_stream(torch.cuda.current_stream(self.ids.device))
        with torch.cuda.stream(side):  # warm-up off the capture (allocations, lazy init, autotuning)
            for _ in range(2):
                self._body()
        torch.cuda.current_stream(self.ids.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._body()

    def step(self, ids: Tensor, positions: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        """ids [S, 1], positions [S], mask [S, 1, W + 1] (any device) -> (next ids [S][, logits [S, V]]):
        the step's outputs (buffers that the next step overwrites: read them before)."""
        self.ids.copy_(ids, non_blocking=True)
        self.positions.copy_(positions[:, None], non_blocking=True)
        self.mask.copy_(mask, non_blocking=True)
        if self.graph is None:
            return self._body()
        self.graph.replay()
        return self.out
