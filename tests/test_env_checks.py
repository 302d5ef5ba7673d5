"""Environment mistakes (a device this machine lacks, an output folder that cannot be written) end in
one line naming the value and the cause, before any model loads — never a traceback."""
import errno
import tempfile
from pathlib import Path

import pytest
import torch

from graphopt.cli import main
from graphopt.env_checks import check_device, check_writable_dir
from graphopt.errors import UserError
from tests._builders import unwritable_folder


def _eval_error(capsys, *argv) -> str:
    assert main(["eval", "--model", "tiny", "--limit", "1", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this case is a machine without CUDA")
def test_eval_cuda_without_gpu_is_one_line(capsys):
    err = _eval_error(capsys, "--device", "cuda")
    assert "--device 'cuda'" in err and "sees no CUDA device" in err and "--device cpu" in err


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:0", "gpu"])
def test_eval_unknown_device_names_the_choices(capsys, device):
    err = _eval_error(capsys, "--device", device)
    assert f"--device {device!r}: expected cpu, cuda or cuda:N" in err


def test_check_device_accepts_cpu_and_counts_cuda_devices():
    assert check_device("cpu") == "cpu"
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        with pytest.raises(UserError, match=f"has {n} CUDA device"):
            check_device(f"cuda:{n}")


def test_output_folder_under_a_regular_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"afile' is a file, not a folder"):
        check_writable_dir(tmp_path / "afile" / "out")
    with pytest.raises(UserError, match=r"afile' is a file, not a folder"):
        check_writable_dir(tmp_path / "afile")


def test_unwritable_output_folder_names_it_and_the_cause(tmp_path):
    folder = unwritable_folder(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"output folder '{folder}/results' cannot be written: "):
            check_writable_dir(folder / "results")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_read_only_file_system_is_named(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match="cannot be written: read-only file system"):
        check_writable_dir(tmp_path / "out")


def test_writable_folder_is_created_and_left_clean(tmp_path):
    out = check_writable_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_lm_eval_backend_refuses_unknown_device_before_loading():
    from graphopt.harness.lm import GraphoptLM
    with pytest.raises(UserError, match="model_args device 'tpu': expected cpu, cuda or cuda:N"):
        GraphoptLM(pretrained="/nonexistent/never-loaded", device="tpu")


def test_run_into_an_output_folder_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    cfg = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"
    code = main(["run", str(cfg), "--set", "model=tiny", "--set", "data.limit=1",
                 "--set", f"output_dir={tmp_path / 'afile' / 'out'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    assert err.endswith(f"output_dir '{tmp_path / 'afile' / 'out'}': '{tmp_path / 'afile'}' is a file, not a folder")
