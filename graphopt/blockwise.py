"""Whether a pass may run block by block (graphopt.optimize_blocks), as it declared when it registered.

    register_pass(..., blockwise=True)        its rewrites are local: it runs on each distinct decoder
                                              block's graph and on the graph around the blocks
    register_pass(..., blockwise=ASSEMBLED)   it runs once, last, on the graph the blocks were spliced into
    register_pass(..., blockwise=fn)          fn(options) -> bool
    raise NotBlockwise(why)                   (a pass on a block graph, or the capture) optimise it whole
"""
from __future__ import annotations

ASSEMBLED = "assembled"


class NotBlockwise(Exception):
    """This module or pipeline cannot be optimised block by block (the message says why): optimise it whole.
    A pass raises it on a block graph for a rewrite the graph around the blocks would have to follow."""


def runs_per_block(spec) -> bool:
    """Whether this pass (a PassSpec), with these options, may run on each distinct decoder block and on the
    graph around the blocks instead of on the whole graph."""
    blockwise = spec.info.blockwise
    return blockwise != ASSEMBLED and bool(blockwise(spec.opts) if callable(blockwise) else blockwise)


def runs_on_assembled(spec) -> bool:
    """Whether this pass runs once on the graph the optimised blocks were spliced into (blockwise=ASSEMBLED)."""
    return spec.info.blockwise == ASSEMBLED
