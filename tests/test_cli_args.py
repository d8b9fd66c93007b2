"""Bad command-line values: exit code 2 and exactly one line on stderr naming the option, never a
traceback, never a run on silent garbage; the library configs check the same ranges."""

import io
import math
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from useg.cli import build_parser, main
from useg.errors import ConfigError, UsegError
from useg.training.config import TrainConfig
from useg.training.options import RANGES, TrainOptions


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of ``useg argv``; any exception but SystemExit propagates."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str, command: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"useg {command}: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], err


# --------------------------------------------------------------------------------------------
# Generated bad values

# Letters only: never an int, and as a float at most inf/nan/infinity, which are refused too.
_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC_", min_size=1, max_size=8)
_NOT_FINITE = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity", "-nan"])
_MISC = st.sampled_from(["", "1.5", "2e0.5", "1,2", "0x10", "3 4", "ten"])


def _fmt(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def bad_ints(low: int) -> st.SearchStrategy[str]:
    """Text that is not an integer of at least ``low``."""
    return st.one_of(
        st.integers(max_value=low - 1).map(str), _WORDS, _NOT_FINITE, _MISC,
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v)).map(repr),
    )


def bad_floats(low: float, high: float, low_open: bool, high_open: bool) -> st.SearchStrategy:
    """Text that is not a finite number in the range."""
    parts = [_WORDS, _NOT_FINITE, st.sampled_from(["", "1;2", "ten", "1e400"])]
    if low > -math.inf:
        parts.append(st.floats(max_value=low, exclude_max=not low_open, allow_nan=False,
                               allow_infinity=False).map(_fmt))
    if high < math.inf:
        parts.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False,
                               allow_infinity=False).map(_fmt))
    return st.one_of(*parts)


def bad_for(name: str) -> st.SearchStrategy[str]:
    integer, low, high, low_open, high_open = RANGES[name]
    return bad_ints(int(low)) if integer else bad_floats(low, high, low_open, high_open)


_TRAINING = [name for name in RANGES if name not in ("unlabeled", "warmup")]
_BAD_SIZES = st.one_of(st.integers(max_value=0).map(str), _WORDS, _NOT_FINITE,
                       st.sampled_from(["", "0x5", "5x-1", "1.5", "x"]))
_BAD_FRACTION_LISTS = st.one_of(
    bad_floats(0.0, 1.0, False, False), st.sampled_from(["0.5,nan", "0.1,2", "-1,0.5", ","]))

# (command, argv that parses, option, strategy of bad values)
CASES = [
    *[(cmd, base, f"--{name.replace('_', '-')}", bad_for(name))
      for cmd, base in (("train", ["train", "--out", "o"]),
                        ("densify", ["densify", "v.tif", "--out", "o"]))
      for name in _TRAINING],
    *[("predict", ["predict", "x.tif", "--model", "m", "--out", "o"], option, strategy)
      for option, strategy in (("--batch-size", bad_ints(1)), ("--torch-threads", bad_ints(1)),
                               ("--workers", bad_ints(1)), ("--tile", _BAD_SIZES),
                               ("--block", _BAD_SIZES))],
    ("demo", ["demo"], "--iterations", bad_ints(1)),
    ("demo", ["demo"], "--seed", bad_ints(0)),
    ("evaluate", ["evaluate", "p", "g"], "--thresholds", _BAD_FRACTION_LISTS),
    ("evaluate", ["evaluate", "p", "g"], "--iou-thresholds", _BAD_FRACTION_LISTS),
    ("evaluate", ["evaluate", "p", "g"], "--channel", _WORDS),
]


@pytest.mark.parametrize("command, base, option, values", CASES,
                         ids=[f"{c[0]}{c[2]}" for c in CASES])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_bad_numeric_value_is_one_line_naming_the_option(data, command, base, option, values):
    value = data.draw(values, label="value")
    code, err = run_cli([*base, f"{option}={value}"])
    assert_one_line_error(code, err, command, option)


@pytest.mark.parametrize("name", _TRAINING)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_library_configs_refuse_the_same_values(data, name):
    integer, low, high, low_open, high_open = RANGES[name]
    if integer:
        value = data.draw(st.one_of(st.integers(max_value=int(low) - 1),
                                    st.sampled_from([1.5, math.nan, "3"])))
    else:
        value = data.draw(st.one_of(
            st.sampled_from([math.nan, math.inf, -math.inf, "1"]),
            st.floats(max_value=low, exclude_max=not low_open, allow_nan=False),
            *([st.floats(min_value=high, exclude_min=not high_open)] if high < math.inf
              else [])))
    if name in ("tile", "spacing"):
        value = [value]
    with pytest.raises(ConfigError, match=name):
        TrainOptions(**{name: value})
    config_name = {"dice": "dice_weight"}.get(name, name)
    if config_name in TrainConfig.__dataclass_fields__:
        with pytest.raises(ConfigError, match=config_name) as info:
            TrainConfig(**{config_name: value})
        assert "\n" not in str(info.value)


def test_defaults_and_good_values_pass():
    TrainOptions()
    TrainConfig()
    TrainConfig(tile=(64, 64), lr=1e-3, w0=0, workers=0, grad_clip=0, spacing=(50, 4, 4))
    TrainOptions(tile=[64], width=8, depth=0, dropout=0.5, spacing=[1.0], unlabeled=-1)
    args = build_parser().parse_args(
        ["train", "--out", "o", "--batch-size", "2", "--lr", "1e-4", "--w0", "0", "--workers",
         "0", "--momentum", "0.9", "--dropout", "0", "--depth", "0", "--tile", "64", "64"])
    assert (args.batch_size, args.lr, args.workers, args.tile) == (2, 1e-4, 0, [64, 64])


# --------------------------------------------------------------------------------------------
# The cases a fuzz run found


@pytest.mark.parametrize("argv, option", [
    (["train", "--out", "o", "--w0", "nan"], "--w0"),
    (["train", "--out", "o", "--workers", "-1"], "--workers"),
    (["train", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["train", "--out", "o", "--lr", "-1"], "--lr"),
    (["train", "--out", "o", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["predict", "x.tif", "--model", "m", "--out", "o", "--batch-size", "-1"], "--batch-size"),
    (["predict", "x.tif", "--model", "m", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["predict", "x.tif", "--model", "m", "--out", "o", "--torch-threads", "0"],
     "--torch-threads"),
    (["predict", "x.tif", "--model", "m", "--out", "o", "--tile", "abc"], "--tile"),
    (["predict", "x.tif", "--model", "m", "--out", "o", "--dask", "--block", "0"], "--block"),
    (["train", "--out", "o", "--optimizer", "rmsprop"], "--optimizer"),
    (["predict", "x.tif", "--model", "m"], "--out"),  # missing required option
    (["train"], "--out"),
])
def test_fuzz_cases_one_line_exit_2(argv, option):
    code, err = run_cli(argv)
    assert_one_line_error(code, err, argv[0], option)


def test_unknown_command_and_option_are_one_line():
    code, err = run_cli(["nope"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("useg: error:")
    code, err = run_cli(["predict", "x.tif", "--model", "m", "--out", "o", "--frobnicate"])
    assert_one_line_error(code, err, "predict", "--frobnicate")


@pytest.fixture
def model_and_image(tmp_path):
    from useg.nets import UNet
    from useg.nets.checkpoint import save_model

    model = save_model(UNet("ronneberger2015", width=4, depth=2), tmp_path / "m.safetensors")
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.random.default_rng(0).random((40, 40)).astype(np.float32))
    return model, image


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tile", ["100000", "99999999999"])
def test_huge_tile_is_refused_by_its_memory(tmp_path, model_and_image, tile):
    # However large, the tile is rounded to a valid one at once (no scan from 1) and refused.
    model, image = model_and_image
    code, err = run_cli(["predict", str(image), "--model", str(model), "--out",
                         str(tmp_path / "out"), "--tile", tile, "--device", "cpu"])
    assert_one_line_error(code, err, "predict", "GiB", "tile")
    assert not (tmp_path / "out" / "a_probs.tif").exists()


def test_bad_precision_is_one_line(tmp_path, model_and_image):
    model, image = model_and_image
    code, err = run_cli(["predict", str(image), "--model", str(model), "--out",
                         str(tmp_path / "out"), "--precision", "fp64"])
    assert_one_line_error(code, err, "predict", "fp64")


def test_library_batch_size_is_checked(model_and_image):
    from useg.inference.files import predict_paths
    from useg.inference.predict import predict
    from useg.nets.checkpoint import load_model

    model, image = model_and_image
    with pytest.raises(UsegError, match="batch_size"):
        predict(load_model(model), np.zeros((40, 40), np.float32), device="cpu", batch_size=-1)
    with pytest.raises(UsegError, match="batch-size"):
        predict_paths([image], image.parent / "out", model, batch_size=0)


def test_evaluate_json_pointing_at_a_folder(tmp_path):
    pred, gt = tmp_path / "p.tif", tmp_path / "g.tif"
    tifffile.imwrite(pred, np.zeros((8, 8), np.float32))
    tifffile.imwrite(gt, np.zeros((8, 8), np.uint8))
    code, err = run_cli(["evaluate", str(pred), str(gt), "--json", str(tmp_path)])
    assert_one_line_error(code, err, "evaluate", "--json", "folder")
