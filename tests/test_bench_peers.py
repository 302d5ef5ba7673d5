"""benchmarks/peers.py: peers are timed round-robin (every repeat visits each peer once, in order) with the
median reported, and the script runs end to end on a tiny model with one row per peer."""
import torch

from benchmarks.peers import main, time_round_robin


def test_round_robin_order_and_median(monkeypatch):
    # perf_counter at each start/stop: a takes 1, 3, 2 s (median 2); b takes 4, 0.5, 1 s (median 1)
    calls, clock = [], iter([0, 1, 1, 5, 5, 8, 8, 8.5, 8.5, 10.5, 10.5, 11.5])
    monkeypatch.setattr("benchmarks.peers.time.perf_counter", lambda: next(clock))

    def peer(name):
        def run():
            calls.append(name)
            return torch.tensor([float(len(calls))])
        return run

    out = time_round_robin([("a", peer("a"), 1.5), ("b", peer("b"), 0.0)], repeats=3)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert [(n, s, c) for n, s, c, _ in out] == [("a", 2.0, 1.5), ("b", 1.0, 0.0)]
    assert [ll.item() for _, _, _, ll in out] == [5.0, 6.0]  # the last repeat's log-likelihoods


def test_script_runs_on_tiny(capsys):
    assert main(["--preset", "tiny", "--questions", "3", "--skip", "hf,compile,inductor", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| peer")]
    assert len(rows) == 3  # per-pair reference, graphopt fp32 and bf16 on the FX graph
    assert rows[0].split("|")[7].strip() == "1.000" and "[2/2]" in out
