"""The scale-out projection reproduces the one-H100 measurement it is derived from and splits it as the
layouts say (pure arithmetic: no devices involved)."""
import pytest

from benchmarks import scaleout_projection as sp


def test_one_h100_reproduces_the_measured_139_s():
    one = sp.project(sp.Layout("1 × H100", sp.H100, dp=1, tp=1, pp=1))
    assert one["compute_s"] == pytest.approx(139, rel=0.01)  # RESULTS: 3.541 s per 256 questions -> 139 s
    assert one["comm_s"] == 0 and one["fits"]


def test_data_parallel_divides_compute_and_adds_no_all_reduce():
    one = sp.project(sp.Layout("1", sp.H100, dp=1, tp=1, pp=1))
    dp8 = sp.project(sp.Layout("8", sp.H100, dp=8, tp=1, pp=1))
    assert dp8["compute_s"] == pytest.approx(one["compute_s"] / 8) and dp8["comm_s"] == 0


def test_tensor_parallel_traffic_and_memory():
    # two all-reduces of [6656] fp16 per layer, ring factor 2(p-1)/p: 1.6 MB payload, 2.4 MB moved at p=4
    assert sp.tp_bytes_per_token(4) == pytest.approx(2 * 60 * 6656 * 2 * 1.5)
    assert sp.tp_bytes_per_token(1) == 0
    assert not sp.project(sp.Layout("dp4", sp.V100, dp=4, tp=1, pp=1))["fits"]  # 65 GB on a 32 GB card
    assert sp.project(sp.Layout("tp4", sp.V100, dp=1, tp=4, pp=1))["weights_gb"] == pytest.approx(16.3, abs=0.1)


def test_table_lists_every_layout():
    text = sp.table()
    assert all(layout.label in text for layout in sp.LAYOUTS) and "| no |" in text
