"""Recipes, the time estimate, the time budget, the note on runs without validation, the demo."""

import csv
import json
import re
import time

import pytest
from conftest import TINY
from safetensors import safe_open

from useg.cli import main
from useg.errors import ConfigError
from useg.nets.checkpoint import load_model
from useg.training.from_folders import make_config
from useg.training.recipes import RECIPES, choose_recipe, recipe_settings

ESTIMATE = re.compile(r"^(\d+) steps at ([\d.]+(?:e-?\d+)?) s/step: about [\d.]+ (s|min|h)\b.* "
                      r"on this CPU \(.+\)", re.MULTILINE)


@pytest.fixture
def one_thread():
    """One torch thread: on cores that other programs keep busy, a second thread makes the
    steps' time erratic (each waits for the other), and these tests measure time."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(dataset, out, *extra, val=False):
    args = ["train", "--images", str(dataset / "train/images"), "--labels",
            str(dataset / "train/labels"), "--out", str(out), "--quiet", "--log-every", "5",
            *TINY, *extra]
    if val:
        args += ["--val-images", str(dataset / "val/images"), "--val-labels",
                 str(dataset / "val/labels")]
    return main(args)


def _config(run):
    return json.loads((run / "config.json").read_text())


def _rows(run):
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# Recipes


def test_auto_picks_the_recipe_of_the_device_and_says_why():
    name, why = choose_recipe("auto", "cpu")
    assert name == "cpu-fast" and "CPU" in why
    name, why = choose_recipe("auto", "cuda")
    assert name == "gpu-paper" and "CUDA" in why
    assert choose_recipe("gpu-paper", "cpu") == ("gpu-paper", "as asked")
    with pytest.raises(ConfigError, match="recipe must be one of auto, cpu-fast, cpu-best, "
                       "gpu-paper"):
        choose_recipe("fast", "cpu")
    for recipe in RECIPES.values():  # a measured time, or that there is none, per ndim
        assert all(recipe["measured"][ndim] for ndim in recipe.get("ndims", (2, 3)))


def test_recipe_settings_and_explicit_options_over_them():
    fast = make_config(2, recipe="auto", device="cpu")
    assert (fast.net["width"], fast.net["depth"], fast.tile) == (16, 3, [252, 252])
    assert (fast.optimizer, fast.lr, fast.schedule) == ("adam", 1e-3, "poly")
    assert fast.iterations == recipe_settings("cpu-fast", 2)["iterations"]
    assert fast.recipe["name"] == "cpu-fast" and "CPU" in fast.recipe["why"]
    paper = make_config(2, recipe="gpu-paper", device="cpu")
    assert (paper.net["width"], paper.net["depth"], paper.tile) == (64, 4, [572, 572])
    assert (paper.optimizer, paper.lr, paper.momentum, paper.iterations) == (
        "sgd", 0.01, 0.99, 2000)
    # Without a recipe: the papers' settings, nothing recorded.
    assert make_config(2, device="cpu").to_dict() == {**paper.to_dict(), "recipe": None}
    # An option given overrides its one setting, None means not given.
    cfg = make_config(2, recipe="cpu-fast", device="cpu", width=4, iterations=7, tile=None,
                      depth=None)
    assert (cfg.net["width"], cfg.net["depth"], cfg.iterations, cfg.tile) == (4, 3, 7, [252] * 2)
    assert cfg.recipe["given"] == ["iterations", "width"]
    # The recipe's learning rate goes with its optimizer.
    sgd = make_config(2, recipe="cpu-fast", device="cpu", optimizer="sgd")
    assert (sgd.optimizer, sgd.lr, sgd.momentum) == ("sgd", 0.01, 0.99)
    assert make_config(2, recipe="cpu-fast", device="cpu", lr=5e-4).lr == 5e-4
    # 3D: the CPU configuration of the sparse 3D bench.
    vol = make_config(3, recipe="cpu-fast", device="cpu")
    assert (vol.net["width"], vol.net["depth"], vol.net["padding"], vol.tile) == (
        8, 2, "same", [44, 44, 44])


def test_cpu_best_is_the_configuration_chosen_on_validation_in_2d_and_3d():
    best = make_config(3, recipe="cpu-best", device="cpu")
    fast = make_config(3, recipe="cpu-fast", device="cpu")
    # 3D: the same network and tile as cpu-fast's 3D one, trained longer.
    assert (best.net, best.tile, best.optimizer) == (fast.net, fast.tile, fast.optimizer)
    assert best.iterations == 15000 > fast.iterations
    # ... with its tiles made in the training process, as when it was chosen; --workers and
    # the other recipes keep theirs (1, the default).
    assert (best.workers, fast.workers) == (0, 1)
    assert make_config(3, recipe="cpu-best", device="cpu", workers=2).workers == 2
    assert make_config(2, recipe="cpu-best", device="cpu").workers == 1
    # Its augmentation is the one it was chosen with (none); the flags still override it.
    from useg.training.from_folders import build_config
    from useg.training.options import TrainOptions

    def augment(ndim=3, **flags):
        return build_config(TrainOptions(device="cpu", **flags), ndim, 1)["augment"]

    assert augment(recipe="cpu-best") is None and augment(recipe="cpu-fast") == {}
    assert augment(recipe="cpu-fast", no_elastic=True) == {"elastic": False}
    assert augment(recipe="cpu-fast", no_augment=True) is None
    assert augment(recipe="cpu-best", no_elastic=True) == {"elastic": False}
    # As on the command line: --workers not given is the recipe's; given, it is recorded so.
    cli = build_config(TrainOptions(recipe="cpu-best", device="cpu"), 3, 1)
    given = build_config(TrainOptions(recipe="cpu-best", device="cpu", workers=1), 3, 1)
    assert (cli["workers"], given["workers"]) == (0, 1)
    assert given["recipe"]["given"] == ["workers"] and cli["recipe"]["given"] == []
    from useg.training.loop import _recipe_line

    assert _recipe_line(best).endswith("15000 steps, no augmentation")
    assert "augmentation" not in _recipe_line(fast)
    # 2D: bench/isbi2012_recipe.py's choice on the ISBI 2012 validation slices: the paper's
    # valid layout at width 32, depth 3, one 316x316 tile per step, the paper's weight map with
    # its border term at w0 3 and without its class balance, the default (elastic)
    # augmentation resampling bicubically, a soft Dice term of weight 0.5, and 4500 steps.
    flat = make_config(2, recipe="cpu-best", device="cpu")
    assert (flat.net["width"], flat.net["depth"], flat.net["padding"], flat.tile) == (
        32, 3, "valid", [316, 316])
    assert (flat.optimizer, flat.lr, flat.schedule, flat.iterations) == ("adam", 1e-3, "poly",
                                                                        4500)
    assert (flat.w0, flat.sigma, flat.class_balance, flat.dice_weight) == (3.0, 5.0, False, 0.5)
    assert augment(2, recipe="cpu-best") == {"interpolation": "cubic"}
    assert flat.net["dropout"] == 0.5
    assert _recipe_line(flat).endswith(
        "4500 steps, Dice term 0.5, border weight w0 3, no class balance, bicubic resampling")
    # --no-elastic drops the deformation and keeps the recipe's resampling; --no-augment all.
    assert augment(2, recipe="cpu-best", no_elastic=True) == {"interpolation": "cubic",
                                                              "elastic": False}
    assert augment(2, recipe="cpu-best", no_augment=True) is None
    assert _recipe_line(make_config(2, recipe="cpu-best", device="cpu",
                                    augment={"elastic": False})).endswith(
        "no elastic deformation, bicubic resampling; given over it: augment")

    # --dice is the recipe's unless given; given, it wins and the record says so.
    def dice(**flags):
        return build_config(TrainOptions(device="cpu", **flags), 2, 1)

    assert dice(recipe="cpu-best")["dice_weight"] == 0.5
    assert dice(recipe="cpu-fast")["dice_weight"] == 0.0
    given = dice(recipe="cpu-best", dice=0.0)
    assert given["dice_weight"] == 0.0 and "dice_weight" in given["recipe"]["given"]
    assert dice(recipe="cpu-fast", dice=0.5)["dice_weight"] == 0.5
    # --w0 likewise: the recipe's border weight amplitude unless given, else the paper's 10.
    assert dice(recipe="cpu-fast")["w0"] == 10.0
    assert dice(recipe="cpu-fast", w0=2.5)["w0"] == 2.5
    assert make_config(2, device="cpu").w0 == 10.0
    assert dice(recipe="cpu-best")["w0"] == 3.0
    given = dice(recipe="cpu-best", w0=10.0)
    assert given["w0"] == 10.0 and "w0" in given["recipe"]["given"]
    # The class balance likewise: the recipe's unless --no-class-balance, else on.
    assert dice(recipe="cpu-fast")["class_balance"] is True
    assert dice(recipe="cpu-fast", no_class_balance=True)["class_balance"] is False
    assert dice(recipe="cpu-best")["class_balance"] is False
    assert "class_balance" in dice(recipe="cpu-best", no_class_balance=True)["recipe"]["given"]
    assert "no class balance" not in _recipe_line(fast)
    # ... in every label mode (3D cpu-best trains boundaries, where w0 takes no part).
    flat3d = make_config(3, recipe="cpu-best", device="cpu", class_balance=False, w0=3.0)
    assert flat3d.label_mode == "boundary"
    assert _recipe_line(flat3d).endswith("15000 steps, no class balance, no augmentation")


def test_useg_train_prints_the_recipe_the_estimate_and_the_missing_validation(
        dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(dataset, run, "--iterations", "12", "--checkpoint-every", "6") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    recipe = [line for line in lines if line.startswith("recipe ")]
    assert len(recipe) == 1 and "cpu-fast (auto: training on the CPU" in recipe[0], out
    assert "given over it: depth, iterations, tile, width" in recipe[0]
    saved = _config(run)
    assert saved["recipe"]["name"] == "cpu-fast" and saved["optimizer"] == "adam"
    # The estimate, from timed steps, before the run goes on.
    match = ESTIMATE.search(out)
    assert match and int(match.group(1)) == 12 and float(match.group(2)) > 0, out
    # It names the precision the run resolved "auto" to: the pace depends on it.
    assert match.group(0).endswith(f", {saved['precision']})") and saved["precision"] in (
        "fp32", "bf16"), out
    # No validation set: said once, and recorded in the model header.
    assert lines.count("no validation images: the model kept is the last one, and no "
                       "checkpoint, threshold or post-processing setting was chosen on data") == 1
    meta = load_model(run / "last.safetensors").meta
    assert meta["validation"] is None and "no validation images" in meta["validation_note"]
    assert not (run / "best.safetensors").exists()
    # With validation images, the header says what was chosen on them.
    with_val = tmp_path / "with_val"
    assert _train(dataset, with_val, "--iterations", "4", val=True) == 0
    assert "no validation images" not in capsys.readouterr().out
    assert load_model(with_val / "best.safetensors").meta["validation"]["images"] == 1


def test_resume_keeps_the_recipe_of_the_run(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(dataset, run, "--iterations", "2", "--recipe", "gpu-paper") == 0
    assert _config(run)["optimizer"] == "sgd"
    # auto (on the CPU: cpu-fast) stands for the run's own recipe; naming another is refused.
    assert main(["train", "--resume", "--out", str(run), "--quiet", "--iterations", "3",
                 "--recipe", "auto"]) == 0
    assert _config(run)["optimizer"] == "sgd" and _config(run)["iterations"] == 3
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--iterations", "4", "--recipe",
                 "cpu-fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--recipe cpu-fast differs" in err, err


@pytest.mark.parametrize("value, words", [
    ("20", "needs a unit"), ("20x", "needs a unit"), ("0s", "must be positive"),
    ("-5m", "needs a unit"), ("1e400h", "needs a unit"),
])
def test_bad_time_budget_is_one_line(value, words, capsys):
    assert main(["train", "--out", "o", f"--time-budget={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--time-budget" in err and words in err, err


# ----------------------------------------------------------------------------------------------
# The time budget


def test_time_budget_ends_the_run_in_time_and_the_schedule_at_its_end(dataset, tmp_path, capsys,
                                                                      one_thread):
    budget, asked = 8.0, 100_000
    # A run whose steps slow down after the timed ones stops within the budget instead (its
    # own test below); on a shared machine a run of a few seconds often loses a tenth of its
    # pace (seen in two runs in a row within the whole suite), so up to four runs get the
    # chance to keep the pace measured, and the first that does is checked exactly.
    for attempt in range(4):
        run = tmp_path / f"run{attempt}"
        t0 = time.perf_counter()
        assert _train(dataset, run, "--iterations", str(asked), "--time-budget",
                      f"{budget:g}s", "--checkpoint-every", "50", "--val-every", "50",
                      val=True) == 0
        took = time.perf_counter() - t0
        # The steps are planned for 90% of the time left; start-up and the last validation
        # come on top, so the wall time is only bounded loosely here.
        assert took < 3 * budget, took
        saved, out = _config(run), capsys.readouterr().out
        decision = saved["budget_decision"]
        if "stopped" not in decision:
            break
    assert "stopped" not in decision, decision  # the steps kept the pace measured
    steps = saved["iterations"]
    assert 0 < steps == decision["iterations"] < asked == decision["asked_iterations"]
    assert decision["seconds_per_step"] > 0 and decision["validation_seconds"] > 0
    assert f"{steps} of the {asked} steps fit" in decision["reason"]
    assert decision["reason"] in out.splitlines()
    # The run trained exactly the decided steps, and its schedule reached its end there.
    rows = _rows(run)
    assert int(rows[-1]["step"]) == steps
    assert float(rows[-1]["lr"]) == pytest.approx(1e-3 * (1 - (steps - 1) / steps) ** 0.9)
    with safe_open(str(run / "state.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["useg_state"])["info"]["step"] == steps
    # The model files record the decided run.
    assert load_model(run / "best.safetensors").meta["provenance"]["config"]["iterations"] == steps
    # Resuming keeps the decision: nothing more to train, nothing changed.
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert _config(run) == saved and int(_rows(run)[-1]["step"]) == steps


def _tiny_budget_run(time_budget, log_every=5):
    cfg = make_config(2, recipe="cpu-fast", device="cpu", width=2, depth=1, tile=36,
                      iterations=100_000, time_budget=time_budget, workers=0,
                      log_every=log_every, checkpoint_every=5, seed=3)
    return cfg


def test_a_run_interrupted_after_the_budget_decision_resumes_to_the_decided_steps(
        dataset, tmp_path, one_thread):
    from useg.training.loop import train
    from useg.training.samples import load_pairs

    cfg = _tiny_budget_run(10.0)
    samples = load_pairs(dataset / "train/images", dataset / "train/labels", ndim=2,
                         in_channels=1, **cfg.sample_options())
    run = tmp_path / "run"

    def stop_after_the_decision(step, row):
        # The first logged step after the decision that is not the run's last: how many steps
        # the budget allows depends on the machine's load.
        decision = _config(run).get("budget_decision")
        if (decision and decision["decided_at_step"] < step < decision["iterations"]
                and step % 5 == 0):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make_config(**_same(cfg)), samples, run, progress=False,
              callback=stop_after_the_decision)
    decided = _config(run)
    steps = decided["iterations"]
    assert steps < 100_000 and decided["budget_decision"]["asked_iterations"] == 100_000
    # The same configuration (100000 steps asked) continues to the decided steps and decides
    # nothing again: the schedule of the uninterrupted run.
    notes = []
    train(make_config(**_same(cfg)), samples, run, resume=True, progress=False,
          say=notes.append)
    assert _config(run) == decided
    # ... and says so, for whoever gave the 100000 steps again expecting all of them.
    assert any(f"resuming to step {steps}" in n and "100000 asked for" in n for n in notes)
    rows = _rows(run)
    assert int(rows[-1]["step"]) == steps
    assert float(rows[-1]["lr"]) == pytest.approx(1e-3 * (1 - (steps - 1) / steps) ** 0.9)


def test_steps_slower_than_measured_stop_the_run_within_the_budget(dataset, tmp_path,
                                                                 one_thread):
    from useg.training.loop import train
    from useg.training.samples import load_pairs

    cfg = _tiny_budget_run(15.0, log_every=1)
    samples = load_pairs(dataset / "train/images", dataset / "train/labels", ndim=2,
                         in_channels=1, **cfg.sample_options())
    run, notes, pause = tmp_path / "run", [], []

    def slow_down(step, row):  # another program takes the cores once the budget is decided
        decision = cfg.budget_decision
        if decision and not pause:
            # At this pace the planned steps alone take twice the whole time that was left at
            # the decision, whatever its measured step, validation and checkpoint took on a
            # loaded machine (a pace of twice the measured step was not enough when the
            # checkpoints measured slow dominated the plan and then went fast). Fixed once:
            # the stop rewrites the decision's iterations.
            planned = max(1, decision["iterations"] - decision["decided_at_step"])
            pause.append(max(0.1, 2 * (cfg.time_budget - decision["elapsed_seconds"]) / planned))
        if pause:
            time.sleep(pause[0])

    t0 = time.perf_counter()
    train(cfg, samples, run, progress=False, callback=slow_down, say=notes.append)
    # The budget, and a margin for the last validation and checkpoint taking longer than timed:
    # the step that would have ended past the budget was never begun.
    assert time.perf_counter() - t0 < 15.0 + 1.0
    decision = _config(run)["budget_decision"]
    stopped = _config(run)["iterations"]
    if decision["decided_at_step"] == stopped:
        pytest.skip("the machine was too loaded: the budget was spent while the first steps "
                    "were timed, so no step was planned that could go slower")
    assert decision["iterations"] == stopped < decision["asked_iterations"]
    assert f"stops after step {stopped}" in decision["stopped"] and decision["stopped"] in notes
    assert int(_rows(run)[-1]["step"]) == stopped


def _same(cfg):
    """make_config keywords that rebuild ``cfg``."""
    return dict(ndim=2, recipe="cpu-fast", device="cpu", width=cfg.net["width"],
                depth=cfg.net["depth"], tile=cfg.tile, iterations=cfg.iterations,
                time_budget=cfg.time_budget, workers=0, log_every=cfg.log_every,
                checkpoint_every=cfg.checkpoint_every, seed=cfg.seed)


# ----------------------------------------------------------------------------------------------
# The demo


def test_demo_scores_a_held_out_image_beside_the_floor(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "3", "--data", "synthetic",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3 and "not trained or chosen on" in summary["test_image"]
    floor = summary["floor"]
    # The raw image's best threshold on synthetic cells: far from perfect, far from chance.
    assert 0.01 < floor["pixel_error"] < 0.2 and 0.01 < floor["adapted_rand_error"] < 0.5
    assert "chosen on the test image itself" in floor["how"]
    report = (out / "report.md").read_text()
    assert "floor without learning" in report and "Good scores:" in report
    assert "floor without learning" in printed and "good: lower is better" in printed
    assert (out / "overlay.png").exists()


def test_isbi_demo_fine_tunes_the_packaged_model(tmp_path):
    from useg.io.datasets import dataset

    if dataset("isbi2012") is None:
        pytest.skip("isbi2012 not in the shared data folder (set USEG_DATA)")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "2", "--data", "isbi",
                 "--quiet"]) == 0
    saved = json.loads((out / "run" / "config.json").read_text())
    assert saved["init"]["model"] == "em-membrane"
    assert saved["net"] == json.loads(json.dumps(load_model("em-membrane").config.to_dict()))
    summary = json.loads((out / "summary.json").read_text())
    assert "slice 24" in summary["test_image"]


def test_demo_says_when_the_model_does_not_beat_the_floor():
    from useg.workflows.demo import score_lines, verdict

    floor = {"pixel_error": 0.06, "adapted_rand_error": 0.16, "how": "raw threshold"}
    good = {"pixel_error": 0.03, "adapted_rand_error": 0.02}
    assert verdict(good, floor).startswith("verdict: the U-Net beats the floor")
    weak = {"pixel_error": 0.07, "adapted_rand_error": 0.02}
    line = verdict(weak, floor)
    assert line.startswith("WARNING") and "pixel error" in line and "adapted" not in line
    assert "again" in line  # what to do: the demo resumes
    assert line in score_lines(weak, 0.5, floor)


def test_a_validation_is_not_taken_for_slow_steps(monkeypatch):
    # The real decision and check on a fake clock: steps run exactly as measured, and each
    # validation takes a good share of the budget; the run must not stop early for it.
    import types

    from useg.training import loop
    from useg.training.config import TrainConfig

    clock = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(loop, "write_config", lambda *a: None)
    monkeypatch.setattr(loop, "_record_decision_in_best", lambda run: None)
    step_s, validation_s, every = 0.1, 15.0, 20
    cfg = TrainConfig(net={"ndim": 2}, iterations=10000, val_every=every, log_every=10,
                      checkpoint_every=10**6, time_budget=100.0)
    run = types.SimpleNamespace(
        out=None, cfg=cfg, step=10, last_check=None, paused=0.0, meta={"provenance": {}},
        dist=types.SimpleNamespace(main=True, world=1), device=types.SimpleNamespace(type="cpu"),
        model=types.SimpleNamespace(train=lambda: None), checkpoint=lambda: None)
    run.due = lambda n: run.step % n == 0 or run.step == cfg.iterations

    def evaluate(samples):
        clock[0] += validation_s

    run.evaluate = evaluate
    clock[0] = 20.0 - validation_s  # the decision's own validation brings the clock to 20 s
    loop._decide_budget(run, step_s, 0.0, val_samples=[object()])
    planned = cfg.iterations
    assert 10 < planned < 10000
    while run.step < cfg.iterations:
        run.step += 1
        clock[0] += step_s
        if run.due(every):  # the loop counts what its validation took apart from the steps
            clock[0] += validation_s
            run.paused += validation_s
        assert not loop._out_of_time(run, 0.0), f"stopped at step {run.step} of {planned}"
    assert clock[0] <= 100.0  # its last validation included, it ended within the budget


def test_the_step_estimate_leaves_out_validations_and_checkpoints(dataset, tmp_path, capsys,
                                                                  one_thread, monkeypatch):
    # Validations made slow on purpose: counted as step time, they would multiply the estimate.
    import useg.training.loop as loop

    log = loop._Run.log

    def slow_log(self, *args, **kwargs):
        time.sleep(0.3)
        return log(self, *args, **kwargs)

    monkeypatch.setattr(loop._Run, "log", slow_log)
    assert _train(dataset, tmp_path / "run", "--iterations", "12", "--val-every", "1",
                  "--checkpoint-every", "1", val=True) == 0
    found = ESTIMATE.search(capsys.readouterr().out)
    assert found is not None
    assert float(found[2]) < 0.3  # a step of this tiny network takes far less than a pause
