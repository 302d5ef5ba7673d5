"""The report's plots, checked without looking at them: after rendering the saved figure every text
artist lies inside the canvas, point labels do not overlap for several close points, the drift plot
draws each run at (speed-up, max |Δ loglik|) with the experiment's tolerance line, and the files keep
their names."""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Annotation, Text  # noqa: E402

from graphopt.runner.report_plots import PLOT_FILES, drift_figure, speedup_figure, tolerance, write_plots  # noqa: E402
from tests._builders import four_run_store, store_rows  # noqa: E402


def _close_points(tmp_path):
    """Seven runs within 3% of each other in speed-up and drift, names past the table's limit, one error."""
    specs = [dict(run="reference", latency_s=2.0, agree=1.0, max_abs_dloglik=0.0, within_tolerance=True)]
    for i in range(6):
        specs.append(dict(run=f"exact passes + packed rows + bf16 variant {i}", latency_s=1.0 - 0.005 * i,
                          agree=0.99 - 0.001 * i, max_abs_dloglik=0.010 + 0.0002 * i, within_tolerance=i != 3))
    specs.append(dict(run="crashed", status="error", error="worker died"))
    for s in specs:
        s.update(passes="-", acc=0.5, acc_norm=0.5, n_params=1000)
    return store_rows(tmp_path, specs, tolerance={"acc_points": 0.5, "max_abs_dloglik": 0.02}).load()


def _render(fig):
    """Save the figure as write_plots does (which draws it) -> the renderer of that drawing."""
    fig.savefig(io.BytesIO(), format="png", dpi="figure", bbox_inches="tight", pad_inches=0.05)
    return fig.canvas.get_renderer()


def _drawn_texts(fig) -> list[Text]:
    """Every visible, non-empty text artist that is drawn (tick labels only of ticks inside the view)."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo <= tick.get_loc() <= hi:
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def _assert_inside_canvas(fig):
    renderer = _render(fig)
    canvas = fig.bbox
    texts = _drawn_texts(fig)
    assert len(texts) > 10
    for t in texts:
        box = t.get_window_extent(renderer)
        assert (box.x0 >= canvas.x0 - 0.5 and box.y0 >= canvas.y0 - 0.5 and box.x1 <= canvas.x1 + 0.5
                and box.y1 <= canvas.y1 + 0.5), f"{t.get_text()!r} at {box.extents} leaves canvas {canvas.extents}"
    return renderer, texts


def _point_labels(ax) -> list[Annotation]:
    return [t for t in ax.texts if isinstance(t, Annotation)]


def _disjoint(a, b) -> bool:
    return a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0


@pytest.mark.parametrize("make", [lambda df: drift_figure(df, {"max_abs_dloglik": 0.02}), speedup_figure],
                         ids=["drift", "speedup"])
def test_every_text_inside_the_canvas(tmp_path, make):
    fig = make(_close_points(tmp_path))
    try:
        _, texts = _assert_inside_canvas(fig)
        names = [t.get_text() for t in texts]
        assert any("speed-up" in n for n in names)  # the axis label is among the checked texts
    finally:
        plt.close(fig)


def test_close_point_labels_do_not_overlap(tmp_path):
    df = _close_points(tmp_path)
    fig = drift_figure(df, tolerance(tmp_path))
    try:
        renderer = _render(fig)
        for ax in fig.axes:
            labels = _point_labels(ax)
            assert sorted(t.get_text() for t in labels) == ["#1", "#2", "#3", "#4", "#5", "#6", "reference"]
            boxes = [t.get_window_extent(renderer) for t in labels]
            frame = ax.get_window_extent(renderer)
            for i, a in enumerate(boxes):
                assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
                for j in range(i):
                    assert _disjoint(a, boxes[j]), (labels[i].get_text(), labels[j].get_text())
    finally:
        plt.close(fig)


def test_drift_plot_points_and_tolerance(tmp_path):
    df = _close_points(tmp_path)
    assert tolerance(tmp_path)["max_abs_dloglik"] == 0.02  # from experiment.json, as `graphopt run` writes it
    fig = drift_figure(df, tolerance(tmp_path))
    try:
        top, bottom = fig.axes
        xy = top.collections[0].get_offsets()
        assert len(xy) == 7  # the failed run is not drawn
        assert xy[1][0] == pytest.approx(2.0 / 1.0) and xy[1][1] == pytest.approx(0.010)
        assert xy[0][1] == pytest.approx(1e-3)  # identical log-likelihoods: one decade below the smallest drift
        assert [t.get_text() for t in top.get_yticklabels() if t.get_position()[1] == pytest.approx(1e-3)] == ["0"]
        tol_lines = [l for l in top.get_lines() if list(l.get_ydata()) == [0.02, 0.02]]
        assert len(tol_lines) == 1 and tol_lines[0].get_linestyle() == "--"
        assert bottom.collections[0].get_offsets()[4][1] == pytest.approx(98.7)  # agreement in %
        colors = top.collections[0].get_facecolors()
        assert tuple(colors[4][:3]) != tuple(colors[1][:3])  # run 3 (outside tolerance) is drawn red
    finally:
        plt.close(fig)


def test_drift_plot_without_experiment_record_says_so(tmp_path):
    df = _close_points(tmp_path)
    (tmp_path / "experiment.json").unlink()
    assert tolerance(tmp_path) == {}
    fig = drift_figure(df, tolerance(tmp_path))
    try:
        texts = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "tolerance not recorded (experiment.json)" in texts
        assert not [l for l in fig.axes[0].get_lines() if l.get_linestyle() == "--"]
    finally:
        plt.close(fig)


def test_write_plots_file_names(tmp_path):
    four_run_store(tmp_path)
    from graphopt.runner.store import load_results
    paths = write_plots(load_results(tmp_path), tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES) == ["drift_vs_speedup.png", "speedup.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert not plt.get_fignums()  # figures are closed after saving


def test_plots_of_failed_or_partial_results(tmp_path):
    """Only the reference finished, one run lacks agreement, everything failed: the figures still draw."""
    df = _close_points(tmp_path)
    df.loc[2, "agree"] = None
    fig = drift_figure(df, tolerance(tmp_path))
    try:
        assert len(fig.axes[0].collections[0].get_offsets()) == 7 and len(fig.axes[1].collections[0].get_offsets()) == 6
        assert "#2" not in [t.get_text() for t in _point_labels(fig.axes[1])]
    finally:
        plt.close(fig)
    df["status"] = "error"
    for fig in (drift_figure(df, {}), speedup_figure(df)):
        try:
            _assert_inside_canvas(fig)
            assert not fig.axes[0].collections or not len(fig.axes[0].collections[0].get_offsets())
        finally:
            plt.close(fig)
