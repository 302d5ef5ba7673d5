"""benchmarks/weight_rounding.py: rounding is per output channel and symmetric, the LM head is left alone
unless asked, and the script's table shows fewer changes (and less drift) at more bits."""
import torch

from benchmarks.weight_rounding import main, round_weights_


def test_round_weights_per_channel():
    lin = torch.nn.Linear(5, 3, bias=False)
    w = torch.tensor([[1.0, -0.6, 0.25, 0.0, 0.1], [10.0, 3.0, -7.0, 1.0, 2.0], [0.02, 0.01, -0.03, 0.0, 0.0]])
    originals = {"weight": w}
    round_weights_(lin, originals, bits=2)  # qmax 1: each row becomes {-1, 0, 1} x its absmax
    expected = torch.tensor([[1.0, -1.0, 0.0, 0.0, 0.0], [10.0, 0.0, -10.0, 0.0, 0.0],
                             [0.03, 0.0, -0.03, 0.0, 0.0]])
    torch.testing.assert_close(lin.weight, expected)
    round_weights_(lin, originals, bits=16)
    torch.testing.assert_close(lin.weight, w, atol=2e-4, rtol=0)


def test_script_table(capsys):
    assert main(["--preset", "tiny", "--questions", "6", "--bits", "2", "14", "--compiler", "none"]) == 0
    out = capsys.readouterr().out
    assert "LM head not" in out
    rows = {int(cells[1]): (int(cells[2].split("/")[0]), float(cells[3]))
            for cells in (line.split("|") for line in out.splitlines() if line.startswith("| ") and "/" in line)}
    assert set(rows) == {2, 14}
    assert rows[14][1] < 0.05 < rows[2][1]  # 14 bits barely moves the log-likelihoods; 2 bits does
    assert rows[14][0] == 0
