"""Issue #17, the remaining bad-input classes: every bad input is one line on stderr naming the
file or option and the problem, exit code 2, never a traceback, never silent garbage, and
nothing left behind. Each class is closed at an edge (output folders and the atomic writer in
useg.io.files, result files skipped when listing inputs, packaged-model names in
nets.checkpoint.resolve_model, label values in training.samples.check_label_values, stale
temporaries removed at the start of a run, the run configuration read by
training.run_folder.read_config) and tested with generated cases besides examples."""

import errno
import io
import json
import os
import stat
import string
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from useg.cli import main
from useg.errors import InputError, ModelFileError, OutputError, UsegError, UsegWarning
from useg.io import read_image, write_image
from useg.io.files import (
    atomic_write,
    check_output_folder,
    is_result_file,
    plan_results,
    remove_stale_temporaries,
)
from useg.labels import IGNORE
from useg.nets import UNet
from useg.nets import checkpoint as ckpt
from useg.nets.checkpoint import resolve_model, save_model
from useg.training.samples import LABEL_MODES, check_label_values, targets_from_labels

TINY = ["--width", "2", "--depth", "1", "--tile", "36", "--workers", "0", "--seed", "3",
        "--quiet", "--iterations", "2"]
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_cli(argv) -> tuple[int, str, str]:
    """Exit code, stderr and stdout of ``useg argv``; any exception but SystemExit propagates
    (a traceback fails the test)."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue(), out.getvalue()


def one_line_error(code: int, err: str, *words: object) -> str:
    """The one error line, after checking exit code 2, one line, no traceback and ``words``."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("useg ") and ": error: " in lines[0], err
    for word in words:
        assert str(word) in lines[0], (word, err)
    return lines[0]


def hidden(folder: Path) -> list[str]:
    """Hidden files (atomic_write's temporaries) anywhere below ``folder``."""
    return sorted(str(p) for p in folder.rglob(".*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny model, one 2D image with binary labels, and a small 3D volume with labels."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(17)
    model = save_model(UNet("ronneberger2015", width=2, depth=1), root / "m.safetensors")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    image = (rng.random((48, 48)) * 255).astype(np.uint8)
    labels = np.zeros((48, 48), np.uint8)
    labels[8:30, 10:40] = 255
    write_image(root / "images" / "a.tif", image)
    write_image(root / "labels" / "a.tif", labels)
    write_image(root / "vol.tif", (rng.random((8, 32, 32)) * 255).astype(np.uint8), axes="ZYX")
    write_image(root / "vol_lab.tif", np.ones((8, 32, 32), np.uint8), axes="ZYX")
    return {"root": root, "model": model, "image": root / "images" / "a.tif",
            "images": root / "images", "labels": root / "labels", "volume": root / "vol.tif",
            "volume_labels": root / "vol_lab.tif"}


# ----------------------------------------------------------------------------------------------
# 1. Output locations


def _command(name: str, data: dict, out: Path) -> list:
    return {
        "predict": ["predict", data["image"], "--model", data["model"], "--out", out, "--quiet"],
        "train": ["train", "--images", data["images"], "--labels", data["labels"], "--out", out,
                  *TINY],
        "densify": ["densify", data["volume"], "--labels", data["volume_labels"], "--out", out,
                    *TINY],
        "demo": ["demo", "--out", out, "--iterations", "1", "--data", "synthetic", "--quiet"],
    }[name]


def _bad_place(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A bad output folder of ``kind`` and the words its refusal must contain."""
    taken = tmp_path / "taken"
    taken.write_text("mine")
    if kind == "a file":
        return taken, "taken: is a file, not a folder"
    if kind == "below a file":
        return taken / "sub" / "dir", f"cannot create this folder, {taken} is a file"
    return Path(os.devnull), f"{os.devnull}: is a device, not a folder"


@pytest.mark.parametrize("kind", ["a file", "below a file", "/dev/null"])
@pytest.mark.parametrize("command", ["predict", "train", "densify", "demo"])
def test_output_folder_that_is_not_a_folder_is_refused_first(data, tmp_path, command, kind):
    out, words = _bad_place(kind, tmp_path)
    code, err, _ = run_cli(_command(command, data, out))
    one_line_error(code, err, words)
    assert (tmp_path / "taken").read_text() == "mine"  # nothing replaced, nothing created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


@pytest.mark.parametrize("command", ["predict", "train", "demo"])
def test_output_folder_without_write_permission(data, tmp_path, monkeypatch, command):
    # The tests run as root, for whom permissions do not apply: the check is os.access.
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked
                        else real(p, mode, **kw))
    code, err, _ = run_cli(_command(command, data, locked / "new"))
    one_line_error(code, err, locked / "new", f"cannot write (permission denied in {locked})")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_for_real(data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err, _ = run_cli(_command("predict", data, locked))
        one_line_error(code, err, locked, "permission denied")
    finally:
        locked.chmod(0o700)


def _full_disk_imwrite(monkeypatch, errnum=errno.ENOSPC):
    """tifffile.imwrite that writes half a file, then fails as a full disk does."""
    def imwrite(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00 half")
        raise OSError(errnum, os.strerror(errnum), str(path))

    monkeypatch.setattr(tifffile, "imwrite", imwrite)


def test_predict_on_a_full_disk(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _full_disk_imwrite(monkeypatch)
    code, err, _ = run_cli(_command("predict", data, out))
    one_line_error(code, err, out / "a_probs.tif", "cannot write (no space left on device)")
    assert list(out.iterdir()) == []  # no result, no temporary


def _full_disk_write_text(monkeypatch):
    """Path.write_text failing as on a full disk for atomic_write's temporaries (after
    writing part of the text)."""
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if ".tmp" in self.name:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_train_on_a_full_disk(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _full_disk_write_text(monkeypatch)
    code, err, _ = run_cli(_command("train", data, out))
    one_line_error(code, err, out / "config.json", "cannot write (no space left on device)")
    assert hidden(tmp_path) == []


def _evaluate_pair(tmp_path: Path) -> tuple[Path, Path]:
    truth = np.zeros((32, 32), np.uint8)
    truth[4:20, 4:20] = 255
    pred, gt = tmp_path / "pred.tif", tmp_path / "gt.tif"
    write_image(pred, (truth / 255).astype(np.float32))
    write_image(gt, truth)
    return pred, gt


def test_evaluate_json_on_a_full_disk(tmp_path, monkeypatch):
    pred, gt = _evaluate_pair(tmp_path)
    _full_disk_write_text(monkeypatch)
    report = tmp_path / "scores.json"
    code, err, _ = run_cli(["evaluate", pred, gt, "--thresholds", "0.5", "--json", report])
    one_line_error(code, err, report, "no space left on device")
    assert not report.exists() and hidden(tmp_path) == []


@pytest.mark.parametrize("kind", ["folder", "named pipe"])
def test_evaluate_json_that_is_not_a_file(tmp_path, kind):
    pred, gt = _evaluate_pair(tmp_path)
    target = tmp_path / "target"
    if kind == "folder":
        target.mkdir()
    else:
        os.mkfifo(target)  # like /dev/null: not a regular file, and never to be replaced
    code, err, _ = run_cli(["evaluate", pred, gt, "--thresholds", "0.5", "--json", target])
    one_line_error(code, err, target)
    assert (target.is_dir() if kind == "folder" else stat.S_ISFIFO(os.stat(target).st_mode))


def test_dask_store_that_is_a_file(data, tmp_path):
    store = tmp_path / "taken.zarr"
    store.write_text("mine")
    code, err, _ = run_cli(["predict", data["image"], "--dask", "--scheduler", "synchronous",
                            "--model", data["model"], "--out", store, "--quiet"])
    one_line_error(code, err, store, "is a file, not a folder")
    assert store.read_text() == "mine"


_NAME = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))


@FAST
@given(parts=st.lists(_NAME, max_size=3))
def test_generated_folders_below_a_file_are_refused(tmp_path, parts):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    out = taken.joinpath(*parts)
    with pytest.raises(OutputError) as caught:
        check_output_folder(out)
    assert str(caught.value).startswith(f"{out}: ") and len(str(caught.value).splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@FAST
@given(errnum=st.sampled_from([errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO,
                               errno.EFBIG]),
       written=st.binary(max_size=64), existed=st.booleans())
def test_generated_write_failures_are_one_line_and_leave_nothing(tmp_path, errnum, written,
                                                                 existed):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    target = folder / "result.tif"
    if existed:
        target.write_bytes(b"old")
    with pytest.raises(OutputError) as caught, atomic_write(target) as tmp:
        tmp.write_bytes(written)
        raise OSError(errnum, os.strerror(errnum), str(tmp))
    assert str(caught.value) == f"{target}: cannot write ({os.strerror(errnum).lower()})"
    assert sorted(p.name for p in folder.iterdir()) == (["result.tif"] if existed else [])
    if existed:
        assert target.read_bytes() == b"old"


# ----------------------------------------------------------------------------------------------
# 2. Inputs and outputs mixed


def test_second_run_into_the_input_folder_skips_its_own_results(data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "x.tif", read_image(data["image"])[0][0])
    # A user's image that merely ends like a result (not written by useg) is an input.
    tifffile.imwrite(folder / "y_labels.tif", np.zeros((40, 40), np.uint8))
    argv = ["predict", folder, "--model", data["model"], "--out", folder, "--quiet"]
    code, err, _ = run_cli(argv)
    assert code == 0, err
    first = sorted(p.name for p in folder.iterdir())
    assert first == ["x.tif", "x_labels.tif", "x_probs.tif", "y_labels.tif",
                     "y_labels_labels.tif", "y_labels_probs.tif"]
    code, err, _ = run_cli([*argv, "--overwrite"])
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == first  # no x_probs_probs.tif
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "skipped 4 result file(s)" in warning[0], err
    # Without --overwrite the second run is refused, as for any result that exists.
    code, err, _ = run_cli(argv)
    one_line_error(code, err, "already exists")


def test_a_result_given_by_name_is_predicted(data, tmp_path):
    out = tmp_path / "out"
    assert run_cli(_command("predict", data, out))[0] == 0
    code, err, _ = run_cli(["predict", out / "a_labels.tif", "--model", data["model"], "--out",
                            tmp_path / "again", "--quiet"])
    assert code == 0, err
    assert (tmp_path / "again" / "a_labels_labels.tif").is_file()


@FAST
@given(stems=st.sets(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10),
                     min_size=1, max_size=4),
       kinds=st.sets(st.sampled_from(["probabilities", "labels", "instances"]), min_size=1))
def test_generated_folders_never_read_their_own_results(tmp_path_factory, stems, kinds):
    from useg.inference.files import write_results

    suffixes = ("_probs", "_labels", "_instances")
    assume(not any(a + s == b for a in stems for b in stems for s in suffixes))  # refused
    folder = tmp_path_factory.mktemp("mixed")
    for stem in stems:
        write_image(folder / f"{stem}.tif", np.zeros((6, 6), np.uint8))
    extra = tuple(k for k in kinds if k == "instances")
    planned = plan_results([folder], folder, probabilities="probabilities" in kinds,
                           labels="labels" in kinds, extra=extra)
    probs = np.full((2, 6, 6), 0.5, np.float32)
    for _, _, targets in planned:
        write_results(targets, probs, derived={k: np.zeros((6, 6), np.uint16) for k in extra})
    with pytest.warns(UsegWarning, match="skipped .* result file"):
        again = plan_results([folder], folder, probabilities="probabilities" in kinds,
                             labels="labels" in kinds, extra=extra, overwrite=True)
    assert sorted(p.name for p, _, _ in again) == sorted(f"{s}.tif" for s in stems)
    written = {t for _, _, r in planned for t in r.values()}
    assert all(is_result_file(t) for t in written)
    assert not any(is_result_file(folder / f"{s}.tif") for s in stems)


# ----------------------------------------------------------------------------------------------
# 3. Packaged-model names


def _packaged_names() -> str:
    return ", ".join(sorted(p.stem for p in ckpt._PACKAGED.glob("*.safetensors")))


def test_names_with_separators_never_leave_the_packaged_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "elsewhere" / "evil"
    outside.parent.mkdir()
    save_model(UNet("ronneberger2015", width=2, depth=1), outside.with_suffix(".safetensors"))
    for name in (os.path.relpath(outside, ckpt._PACKAGED), str(outside), "../../x",
                 "../models/em-membrane", "/etc/passwd-like", ".hidden", "a/b"):
        with pytest.raises(ModelFileError) as caught:
            resolve_model(name)
        assert str(caught.value) == (f"no such model file or packaged model: {name} "
                                     f"(packaged: {_packaged_names()})")
    assert resolve_model("em-membrane") == ckpt._PACKAGED / "em-membrane.safetensors"


def test_cli_model_name_that_is_no_file_nor_packaged(data, tmp_path):
    code, err, _ = run_cli(["predict", data["image"], "--model", "../../x", "--out",
                            tmp_path / "o", "--quiet"])
    one_line_error(code, err, "no such model file or packaged model: ../../x (packaged: ")
    assert not (tmp_path / "o").exists()


_MODEL_TEXT = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(["..", ".", "", "models", "em-membrane", "useg", "src", "nets",
                              "etc", "passwd", "~", "em-membrane.safetensors"]),
             min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(["..", "models", "em-membrane"]), min_size=1, max_size=4).map(
        lambda parts: "/" + "/".join(parts)),
)


@FAST
@given(text=_MODEL_TEXT)
def test_generated_model_names_resolve_to_the_packaged_models_or_fail_in_one_line(
        tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)  # an empty folder: no name there is a file
    given_path = Path(text)
    try:
        found = resolve_model(text)
    except ModelFileError as exc:
        assert str(exc) == (f"no such model file or packaged model: {text} "
                            f"(packaged: {_packaged_names()})")
        return
    if found in (given_path, given_path / "model.safetensors"):
        return  # a path that exists (an absolute one outside the empty folder): a path
    assert found.parent == ckpt._PACKAGED and found.name == f"{text}.safetensors"
    assert "/" not in text and "\\" not in text and not text.startswith(".")


# ----------------------------------------------------------------------------------------------
# 4. Label values outside the label mode


def _train_with_labels(tmp_path: Path, data: dict, labels: np.ndarray, *extra) -> tuple:
    lab_dir = tmp_path / "labels"
    lab_dir.mkdir()
    write_image(lab_dir / "a.tif", labels)
    out = tmp_path / "run"
    code, err, _ = run_cli(["train", "--images", data["images"], "--labels", lab_dir, "--out",
                            out, *TINY, *extra])
    assert not out.exists()  # refused before training, nothing written
    return code, err, lab_dir / "a.tif"


@pytest.mark.parametrize("values, extra, words", [
    ((0, -3), (), ["-3", "'binary'", "0 (background) and one foreground value",
                   "--unlabeled"]),
    ((0, 1, 255), (), ["1, 255", "'binary'", "--label-mode instances"]),
    ((0, 1, 4, 255), ("--label-mode", "classes"), ["4, 255", "0 to 1"]),
    ((0, 1, -3), ("--label-mode", "instances"), ["-3", "'instances'"]),
    ((0, 1, 2, 9, -3), ("--label-mode", "boundary", "--unlabeled", "9"),
     ["-3", "'boundary'", "9 (unlabeled)"]),
])
def test_train_refuses_label_values_outside_the_mode(data, tmp_path, values, extra, words):
    labels = np.resize(np.array(values, np.int16), (48, 48))
    code, err, path = _train_with_labels(tmp_path, data, labels, *extra)
    one_line_error(code, err, path, *words)


def test_the_unlabeled_value_stays_allowed(data, tmp_path):
    labels = np.resize(np.array([0, 255, 7], np.uint8), (48, 48))
    lab_dir = tmp_path / "labels"
    lab_dir.mkdir()
    write_image(lab_dir / "a.tif", labels)
    code, err, _ = run_cli(["train", "--images", data["images"], "--labels", lab_dir, "--out",
                            tmp_path / "run", *TINY, "--unlabeled", "7"])
    assert code == 0, err


def _allowed(values: set, mode: str, unlabeled, classes) -> bool:
    """The rule of each label mode, written out independently of the library."""
    values = {v for v in values if v != unlabeled}
    if any(v < 0 for v in values):
        return False
    if mode == "binary":
        return len({v for v in values if v > 0}) <= 1
    if mode == "classes" and classes is not None:
        return all(v < classes for v in values)
    return True


@FAST
@given(labels=st.lists(st.integers(-4, 300), min_size=1, max_size=36).map(np.array),
       mode=st.sampled_from([m for m in LABEL_MODES if m in
                             ("binary", "instances", "three_class", "boundary", "classes")]),
       unlabeled=st.one_of(st.none(), st.integers(-4, 300)),
       classes=st.one_of(st.none(), st.integers(2, 6)))
def test_generated_label_values_are_refused_or_give_valid_targets(labels, mode, unlabeled,
                                                                  classes):
    labels = labels.reshape(1, -1)
    try:
        check_label_values(labels, mode, unlabeled=unlabeled, classes=classes, name="lab.tif")
    except InputError as exc:
        text = str(exc)
        assert not _allowed(set(labels.ravel().tolist()), mode, unlabeled, classes), text
        assert text.startswith("lab.tif: label value") and f"'{mode}'" in text
        assert len(text.splitlines()) == 1
        return
    assert _allowed(set(labels.ravel().tolist()), mode, unlabeled, classes)
    target, _ = targets_from_labels(labels, mode, unlabeled=unlabeled)
    top = {"classes": classes or int(labels.max()) + 1, "three_class": 3}.get(mode, 2)
    assert np.all((target == IGNORE) | ((target >= 0) & (target < top)))  # no garbage class


# ----------------------------------------------------------------------------------------------
# 5. Leftovers after kill -9


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_write_names_its_temporary_with_the_process_id(tmp_path):
    with atomic_write(tmp_path / "a.tif") as tmp:
        assert tmp.name.startswith(f".a.tif.{os.getpid()}-") and tmp.name.endswith(".tmp.tif")
        tmp.write_bytes(b"x")
        assert remove_stale_temporaries([tmp_path], min_age=0) == []  # ours, being written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


def test_predict_removes_stale_temporaries_of_killed_runs(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    old = time.time() - 3600
    stale = out / f".a_probs.tif.{dead}-0a1b2c3d.tmp.tif"
    fresh = out / f".b_probs.tif.{dead}-0a1b2c3d.tmp.tif"  # a writer elsewhere, just now
    alive = out / f".c_probs.tif.{os.getppid()}-0a1b2c3d.tmp.tif"  # its writer still runs
    mine = out / ".notes.txt"  # not ours
    for path in (stale, fresh, alive, mine):
        path.write_bytes(b"partial")
    for path in (stale, alive, mine):
        os.utime(path, (old, old))
    code, err, _ = run_cli(_command("predict", data, out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [fresh.name, alive.name, mine.name, "a_labels.tif", "a_probs.tif"])


def test_train_removes_stale_temporaries_in_the_run_folder(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".last.safetensors.{_dead_pid()}-00ff00ff.tmp.safetensors"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600,) * 2)
    code, err, _ = run_cli(_command("train", data, out))
    assert code == 0, err
    assert not stale.exists()


@pytest.mark.parametrize("failure", ["disk full", "interrupt"])
def test_failed_dask_run_says_that_rerunning_resumes(data, tmp_path, monkeypatch, failure):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    import useg.inference.dask as dp

    image = tmp_path / "big.tif"
    write_image(image, (np.random.default_rng(3).random((96, 96)) * 255).astype(np.uint8))
    store = tmp_path / "out.zarr"
    argv = ["predict", image, "--dask", "--scheduler", "synchronous", "--block", "32",
            "--tile", "36", "--model", data["model"], "--out", store, "--quiet"]
    real, calls = dp.predict_block, []

    def fail_second(job, index, image=None):
        calls.append(index)
        if len(calls) == 2:
            if failure == "interrupt":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device", str(store / "probs"))
        return real(job, index, image)

    monkeypatch.setattr(dp, "predict_block", fail_second)
    code, err, _ = run_cli(argv)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "1 of " in lines[0] and "rerun the same command to resume" in lines[0], err
    if failure == "interrupt":
        assert code == 130 and lines[0].startswith("useg predict: interrupted; "), err
    else:
        one_line_error(code, err, store / "probs", "no space left on device")
    monkeypatch.setattr(dp, "predict_block", real)
    code, err, out = run_cli(argv)
    assert code == 0, err
    assert "1 already done" in out, out


# ----------------------------------------------------------------------------------------------
# 6. Numeric options, and a run configuration without its network


@pytest.mark.parametrize("argv, option", [
    (["train", "--out", "o", "--w0", "nan"], "--w0"),
    (["train", "--out", "o", "--workers", "-1"], "--workers"),
    (["predict", "x", "--model", "m", "--out", "o", "--torch-threads", "0"], "--torch-threads"),
    (["train", "--out", "o", "--lr", "-1"], "--lr"),
    (["train", "--out", "o", "--checkpoint-every", "0"], "--checkpoint-every"),
])
def test_numeric_options(argv, option):
    code, err, _ = run_cli(argv)
    one_line_error(code, err, option)


def test_resume_of_a_configuration_without_its_network(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"iterations": 3, "labels": {"data": {"images": "a", "labels": "b"}}}))
    code, err, _ = run_cli(["train", "--resume", "--out", tmp_path, "--quiet"])
    one_line_error(code, err, tmp_path / "config.json", "'net' lacks ndim, in_channels, classes")


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 5) | st.text(max_size=3),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)


@FAST
@given(drop=st.sets(st.sampled_from(["net", "ndim", "in_channels", "classes", "iterations",
                                     "lr", "label_mode"])),
       damage=st.dictionaries(st.sampled_from(["iterations", "lr", "width", "depth",
                                               "batch_size", "net"]), _JSON, max_size=2))
def test_generated_damaged_configurations_are_refused_in_one_line(tmp_path_factory, drop,
                                                                  damage):
    from useg.training.config import TrainConfig
    from useg.training.run_folder import read_config

    folder = tmp_path_factory.mktemp("run")
    config = {"net": {"ndim": 2, "in_channels": 1, "classes": 2, "width": 2, "depth": 1},
              "iterations": 3, "lr": 0.01, "label_mode": "binary"}
    for key in drop:
        (config.get("net", {}) if key in ("ndim", "in_channels", "classes") else config).pop(
            key, None)
    for key, value in damage.items():
        if key in ("width", "depth") and isinstance(config.get("net"), dict):
            config["net"][key] = value
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    try:
        saved = read_config(folder)
    except UsegError as exc:
        assert str(exc).startswith(f"{folder / 'config.json'}: ")
        assert len(str(exc).splitlines()) == 1
        return
    TrainConfig.from_dict(saved)  # what resuming builds: it works
    assert {"ndim", "in_channels", "classes"} <= set(saved["net"])


# ----------------------------------------------------------------------------------------------
# 7. useg evaluate: the report over an input, negative ids, channels, options of the other mode
# (refused in useg.evaluation.files.evaluate_folders before any file is read; --channel also
# when parsing)


def _evaluate_files(folder: Path, pred=None, gt=None, channels: int = 1) -> tuple[Path, Path]:
    """A probability map (``channels`` channels) and a binary ground truth, or the label
    images ``pred`` and ``gt`` when given, as ``folder/pred.tif`` and ``folder/gt.tif``."""
    truth = np.zeros((16, 16), np.uint8)
    truth[3:11, 3:11] = 255
    if pred is None:
        pred = np.stack([truth / 255] * channels).astype(np.float32)
        gt = truth
    paths = folder / "pred.tif", folder / "gt.tif"
    write_image(paths[0], pred, axes="CYX" if pred.ndim == 3 else None)
    write_image(paths[1], gt)
    return paths


def _ids(values) -> np.ndarray:
    return np.resize(np.array(values, np.int16), (16, 16))


@pytest.mark.parametrize("which", ["gt", "pred", "gt by a link", "gt in a folder"])
def test_evaluate_json_that_is_an_input_is_refused(tmp_path, which):
    pred, gt = _evaluate_files(tmp_path)
    inputs, target = [pred, gt], {"pred": pred}.get(which, gt)
    if which == "gt by a link":
        target = tmp_path / "link.json"
        target.symlink_to(gt)
    elif which == "gt in a folder":
        for side in ("p", "g"):
            (tmp_path / side).mkdir()
        inputs = [tmp_path / "p", tmp_path / "g"]
        pred, gt = pred.rename(tmp_path / "p" / "a.tif"), gt.rename(tmp_path / "g" / "a.tif")
        target = gt
    before = gt.read_bytes()
    code, err, _ = run_cli(["evaluate", *inputs, "--thresholds", "0.5", "--json", target])
    one_line_error(code, err, "--json", target, "is the input")
    assert gt.read_bytes() == before and hidden(tmp_path) == []


def test_evaluate_json_replaces_only_an_earlier_report(tmp_path):
    pred, gt = _evaluate_files(tmp_path)
    notes, report = tmp_path / "notes.json", tmp_path / "scores.json"
    notes.write_text('{"mine": 1}\n')
    code, err, _ = run_cli(["evaluate", pred, gt, "--thresholds", "0.5", "--json", notes])
    one_line_error(code, err, "--json", notes, "is not a report of useg evaluate")
    assert notes.read_text() == '{"mine": 1}\n'
    report.write_text("")  # empty: nothing to lose
    for _ in range(2):  # new, then an earlier report replaced
        code, err, _ = run_cli(["evaluate", pred, gt, "--thresholds", "0.5", "--json", report])
        assert code == 0, err
        assert json.loads(report.read_text())["mode"] == "isbi"


@pytest.mark.parametrize("side", ["pred", "gt"])
def test_evaluate_instances_refuses_negative_ids(tmp_path, side):
    good, bad = _ids([0, 1, 1, 2]), _ids([-1, 1, 1, 2])
    pred, gt = _evaluate_files(tmp_path, *((bad, good) if side == "pred" else (good, bad)))
    code, err, out = run_cli(["evaluate", pred, gt, "--mode", "instances"])
    one_line_error(code, err, pred if side == "pred" else gt, "negative label values (-1)")
    assert out == ""


@FAST
@given(pred=st.lists(st.integers(-3, 4), min_size=1, max_size=8),
       gt=st.lists(st.integers(-3, 4), min_size=1, max_size=8))
def test_generated_negative_ids_are_refused_naming_the_file(tmp_path_factory, pred, gt):
    paths = _evaluate_files(tmp_path_factory.mktemp("ids"), _ids(pred), _ids(gt))
    code, err, _ = run_cli(["evaluate", *paths, "--mode", "instances"])
    negative = [path for path, values in zip(paths, (pred, gt), strict=True) if min(values) < 0]
    if not negative:
        assert code == 0, err
        return
    one_line_error(code, err, negative[0], "negative label values", min(
        v for v in (pred, gt)[paths.index(negative[0])]))


def test_evaluate_negative_channel_is_refused(tmp_path):
    pred, gt = _evaluate_files(tmp_path, channels=2)
    code, err, _ = run_cli(["evaluate", pred, gt, "--channel", "-1"])
    one_line_error(code, err, "--channel", "-1")
    from useg.evaluation.files import evaluate_folders, read_probability

    with pytest.raises(UsegError, match="--channel must be 0 or more"):
        evaluate_folders(pred, gt, channel=-1)
    with pytest.raises(InputError, match=r"pred.tif: has 2 channels \(0 to 1\), no channel -1"):
        read_probability(pred, -1)


@FAST
@given(channels=st.integers(1, 3), channel=st.integers(0, 4))
def test_generated_channels_are_scored_or_refused_naming_the_file(tmp_path_factory, channels,
                                                                  channel):
    pred, gt = _evaluate_files(tmp_path_factory.mktemp("channels"), channels=channels)
    code, err, _ = run_cli(["evaluate", pred, gt, "--thresholds", "0.5", "--channel", channel])
    if channel < channels:
        assert code == 0, err
        return
    has = "1 channel (0)" if channels == 1 else f"{channels} channels (0 to {channels - 1})"
    one_line_error(code, err, pred, f"has {has}, no channel {channel}")


_MODE_OPTIONS = {
    "isbi": {"--thresholds": ["0.5"], "--membrane": [], "--channel": ["0"],
             "--unassigned": ["singletons"]},
    "instances": {"--iou-thresholds": ["0.5"]},
}


@pytest.mark.parametrize("mode, option", [
    ("instances", "--membrane"), ("instances", "--unassigned"), ("instances", "--channel"),
    ("instances", "--thresholds"), ("isbi", "--iou-thresholds")])
def test_evaluate_refuses_an_option_of_the_other_mode(tmp_path, mode, option):
    pred, gt = _evaluate_files(tmp_path)
    other = "isbi" if mode == "instances" else "instances"
    code, err, out = run_cli(["evaluate", pred, gt, "--mode", mode, option,
                              *_MODE_OPTIONS[other][option]])
    one_line_error(code, err, option, f"not used by --mode {mode}")
    assert out == ""


@FAST
@given(mode=st.sampled_from(["isbi", "instances"]),
       options=st.sets(st.sampled_from([o for m in _MODE_OPTIONS.values() for o in m])))
def test_generated_option_sets_are_used_or_refused(tmp_path_factory, mode, options):
    from useg.evaluation.files import evaluate_folders

    labels = _ids([0, 1, 1, 2])
    pred, gt = _evaluate_files(tmp_path_factory.mktemp("opts"),
                               *((labels, labels) if mode == "instances" else ()))
    values = {"--thresholds": (0.5,), "--membrane": True, "--channel": 0,
              "--unassigned": "singletons", "--iou-thresholds": (0.5,)}
    kwargs = {o.lstrip("-").replace("-", "_"): values[o] for o in options}
    unused = sorted(o for o in options if o not in _MODE_OPTIONS[mode])
    words = _MODE_OPTIONS["isbi"] | _MODE_OPTIONS["instances"]
    argv = ["evaluate", pred, gt, "--mode", mode, *(a for o in options for a in [o, *words[o]])]
    code, err, _ = run_cli(argv)
    if not unused:
        assert code == 0, err
        assert evaluate_folders(pred, gt, mode=mode, **kwargs)["mode"] == mode
        return
    line = one_line_error(code, err, f": not used by --mode {mode}")
    named = line.split(": error: ")[1].split(": not used")[0]
    assert sorted(named.split(", ")) == unused  # those, and only those, named
    with pytest.raises(UsegError, match=f"not used by --mode {mode}"):
        evaluate_folders(pred, gt, mode=mode, **kwargs)


# ----------------------------------------------------------------------------------------------
# 8. Fuzz-run findings: no existing file replaced without --overwrite (useg export, useg
# report: io.files.check_output_file, before any work), and nothing left behind by a refusal
# (--dask settings checked before the store is created, a new training run that fails before
# its first model removed, the demo's options checked before its folder is made)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "bioimageio"])
def test_export_refuses_an_existing_file_unless_overwrite(data, tmp_path, fmt):
    keep = tmp_path / "keep.png"
    keep.write_text("mine")
    code, err, _ = run_cli(["export", data["model"], "--format", fmt, "--out", keep])
    one_line_error(code, err, keep, "already exists", "--overwrite")
    assert keep.read_text() == "mine" and sorted(tmp_path.iterdir()) == [keep]


def test_export_overwrite_replaces_the_file(data, tmp_path):
    out = tmp_path / "m.pt"
    out.write_text("old export")
    code, err, _ = run_cli(["export", data["model"], "--format", "torchscript", "--out", out,
                            "--overwrite"])
    assert code == 0, err
    assert out.read_bytes()[:2] == b"PK"  # a TorchScript archive (zip)


@pytest.fixture(scope="module")
def trained_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    code, err, _ = run_cli(_command("train", data, run))
    assert code == 0, err
    return run


def test_report_refuses_an_existing_file_but_rewrites_its_own(trained_run, tmp_path):
    keep = tmp_path / "keep.png"
    keep.write_text("mine")
    code, err, _ = run_cli(["report", trained_run, "--out", keep, "--device", "cpu"])
    one_line_error(code, err, keep, "already exists", "--overwrite")
    assert keep.read_text() == "mine" and sorted(tmp_path.iterdir()) == [keep]
    own = trained_run / "report.html"
    for argv in (["report", trained_run], ["report", trained_run, "--out", own]):
        own.write_text("an older report")
        code, err, _ = run_cli([*argv, "--device", "cpu"])
        assert code == 0, err
        assert own.read_text().startswith("<!DOCTYPE html>")
    code, err, _ = run_cli(["report", trained_run, "--out", keep, "--device", "cpu",
                            "--overwrite"])
    assert code == 0, err
    assert keep.read_text().startswith("<!DOCTYPE html>")


def test_dask_settings_are_checked_before_the_store_is_created(data, tmp_path):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    from useg.errors import ConfigError
    from useg.inference.dask import predict_dask

    store = tmp_path / "store.zarr"
    code, err, _ = run_cli(["predict", data["image"], "--dask", "--scheduler", "bogus",
                            "--model", data["model"], "--out", store, "--quiet"])
    line = one_line_error(code, err, "--scheduler", "'bogus'")
    assert "resume" not in line
    assert list(tmp_path.iterdir()) == []
    image = read_image(data["image"])[0]
    for bad in ({"scheduler": object()}, {"workers": 0}, {"zarr_format": 4}):
        with pytest.raises(ConfigError):
            predict_dask(data["model"], image, store / "probs", progress=False, **bad)
        assert list(tmp_path.iterdir()) == []


def _diverging_train(data: dict, out: Path) -> list:
    return [*_command("train", data, out), "--lr", "1e30"]


def test_a_new_run_that_fails_before_its_first_model_leaves_nothing(data, tmp_path):
    out = tmp_path / "new" / "run"
    code, err, _ = run_cli(_diverging_train(data, out))
    one_line_error(code, err, "training diverged")
    assert list(tmp_path.iterdir()) == []  # the folders it made, and config.json, removed
    # A folder that existed stays, with what it held (here the config.json of another run).
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "config.json").write_text("{}")
    code, err, _ = run_cli(_diverging_train(data, mine))
    one_line_error(code, err, "training diverged")
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_run_stopped_after_its_first_checkpoint_is_kept(data, tmp_path, monkeypatch):
    import useg.training.loop as loop

    real = loop._Run.checkpoint

    def checkpoint_then_stop(self):
        real(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop._Run, "checkpoint", checkpoint_then_stop)
    out = tmp_path / "run"
    code, err, _ = run_cli(_command("train", data, out))
    assert code == 130, err
    assert {"config.json", "state.safetensors", "last.safetensors"} <= {
        p.name for p in out.iterdir()}  # resumable: kept


def test_demo_checks_its_options_before_making_its_folder(tmp_path):
    out = tmp_path / "g04"
    code, err, _ = run_cli(["demo", "--out", out, "--device", "tpu", "--iterations", "1",
                            "--data", "synthetic", "--quiet"])
    one_line_error(code, err, "'tpu'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_one_file_on_both_sides_of_a_pair_is_refused(dataset, tmp_path, command):
    # The same folder given twice would train the images on themselves as labels (any gray
    # value passes as an instance id) or score each file against itself.
    images = dataset / "train" / "images"
    if command == "train":
        argv = ["train", "--images", images, "--labels", images, "--out", tmp_path / "run",
                "--iterations", "1", "--quiet"]
    else:
        argv = ["evaluate", images, images]
    code, err, _ = run_cli(argv)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "both the" in err and str(images) in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("extra, flag", [
    (["--batch-stats"], "--batch-stats"),  # the 2D network has no batch norm
    (["--label-mode", "boundary", "--w0", "20"], "--w0"),  # no border weights in this mode
    (["--label-mode", "boundary", "--sigma", "3"], "--sigma"),
])
def test_an_option_the_run_would_ignore_is_refused(dataset, tmp_path, extra, flag):
    code, err, _ = run_cli(["train", "--images", dataset / "train" / "images", "--labels",
                            dataset / "train" / "labels", "--out", tmp_path / "run",
                            "--iterations", "1", "--quiet", "--width", "2", "--depth", "1",
                            "--workers", "0", *extra])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert flag in err, err
    assert not (tmp_path / "run" / "last.safetensors").exists()
