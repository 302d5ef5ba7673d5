"""benchmarks/attention_parts.py on CPU: every variant of the prefix_attention launch runs under the
interpreter at a tiny shape and gives the whole op's output."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from benchmarks import attention_parts


def test_quick_run_times_every_variant_and_they_agree(capsys):
    assert attention_parts.run(["--device", "cpu", "--quick", "--reps", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    names = [r[1].strip() for r in rows]
    assert names == ["whole op (doc_starts + launch)", "doc_starts alone", "launch, starts int32",
                     "launch, starts int64", "launch, starts 0", "launch, out [B,H,T,D]"]
    assert all(float(r[2]) > 0 for r in rows)
    diffs = [float(r[3]) for r in rows if r[3].strip()]
    assert len(diffs) == 5 and max(diffs) == 0.0  # same kernel, same fp32 inputs: bit-identical
