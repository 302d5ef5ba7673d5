"""`graphopt inspect` in-process: the op table shows the count change of the pass that ran."""
import re

from graphopt.cli import main


def test_inspect_shows_rmsnorm_fusion(capsys):
    assert main(["inspect", "tiny", "--passes", "fuse_rmsnorm", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    rsqrt = re.search(r"^aten\.rsqrt\.default\s+(\d+)\s+(\d+)\s*$", out, re.M)
    fused = re.search(r"^graphopt\.rms_norm\.default\s+(\d+)\s+(\d+)\s*$", out, re.M)
    assert rsqrt and rsqrt.groups() == ("5", "0"), out
    assert fused and fused.groups() == ("0", "5"), out
    record = re.search(r"^fuse_rmsnorm\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
    assert record and record.group(1) == "5" and int(record.group(3)) < int(record.group(2)), out


def test_inspect_unknown_pass_is_a_user_error(capsys):
    assert main(["inspect", "tiny", "--passes", "fuse_rmsnrom"]) == 2
    assert "fuse_rmsnorm" in capsys.readouterr().err  # the did-you-mean hint
