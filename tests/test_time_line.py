"""The time line (graphopt.time_line): startup, load, setup split by its parts (cached or not), scoring."""
from graphopt.time_line import merge_setups, process_age_s, time_columns, time_line

FRESH = {"path": "blocks", "cached": False, "capture_s": 1.0, "passes_s": 0.5, "weights_s": 0.25, "compile_s": 0.0,
         "first_call_s": 0.5}
KEPT = {"path": "blocks", "cached": True, "load_s": 0.125, "capture_s": 0.0, "passes_s": 0.0, "weights_s": 0.25,
        "compile_s": 0.0, "first_call_s": 0.5}


def test_fresh_setup_names_capture_and_passes_and_the_first_call_in_scoring():
    cols = time_columns(2.0, 1.0, merge_setups([FRESH]), 1.75, 10.5)
    assert cols["setup_s"] == 1.75 and cols["scoring_s"] == 10.5 and cols["first_call_s"] == 0.5
    assert not cols["setup_cached"]
    line = time_line(cols)
    assert line == ("time: startup 2.0s, load 1.0s, setup 1.8s not cached (capture 1.0s, passes 0.5s, weights 0.2s, "
                    "compile 0.0s), scoring 10.5s (first call 0.5s); total 15.2s")


def test_kept_graph_is_cached_only_when_every_graph_came_from_the_cache():
    assert "cached (kept graph 0.1s" in time_line(time_columns(0.0, 0.0, merge_setups([KEPT]), 0.4, 1.0))
    both = merge_setups([KEPT, FRESH])
    assert not both["cached"] and both["weights_s"] == 0.5 and both["graphs"] == 2 and both["first_call_s"] == 1.0


def test_no_graph_and_process_age():
    line = time_line(time_columns(0.5, 0.5, merge_setups([{"path": "none", "compile_s": 0.0, "first_call_s": 0.1}]),
                                  0.0, 2.0))
    assert "setup 0.0s (no graph), scoring 2.0s (first call 0.1s)" in line
    assert 0.0 < process_age_s() < 24 * 3600


def test_generation_is_said_and_counted_only_where_text_was_generated():
    cols = time_columns(1.0, 1.0, merge_setups([FRESH, KEPT]), 2.0, 3.0, generation_s=4.5)
    line = time_line(cols)
    assert cols["generation_s"] == 4.5 and line.endswith("scoring 3.0s (first call 1.0s), generation 4.5s; total 11.5s")
    assert "generation" not in time_line(time_columns(1.0, 1.0, merge_setups([FRESH]), 2.0, 3.0))
