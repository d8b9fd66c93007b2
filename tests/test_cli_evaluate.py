import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from useg.cli import main


def membrane_gt(shape=(16, 16)):
    gt = np.full(shape, 255, np.uint8)
    gt[:, 7] = 0
    gt[9, :] = 0
    return gt


def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_isbi_folders_perfect_and_imperfect(tmp_path, capsys):
    gt = membrane_gt()
    save_png(tmp_path / "gt" / "a.png", gt)
    save_png(tmp_path / "gt" / "b.png", gt)
    save_png(tmp_path / "pred" / "a.png", gt)  # 8-bit, 0/255: exact
    merged = (gt > 0).astype(np.float32)
    merged[3, 7] = 1.0  # a gap in the vertical membrane merges two cells
    tifffile.imwrite(tmp_path / "pred" / "b.tif", merged)
    out = tmp_path / "scores.json"
    rc = main(
        [
            "evaluate",
            str(tmp_path / "pred"),
            str(tmp_path / "gt"),
            "--json",
            str(out),
            "--thresholds",
            "0.5",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "V_rand" in printed and "warp_err" in printed
    report = json.loads(out.read_text())
    assert report["mode"] == "isbi"
    by_name = {p["pred"].split("/")[-1]: p["scores"]["per_threshold"][0] for p in report["pairs"]}
    assert by_name["a.png"]["pixel_error"] == 0.0
    assert by_name["a.png"]["v_rand"] == 1.0
    assert by_name["b.tif"]["warping_error"] == 1 / 256
    assert by_name["b.tif"]["warping_mergers"] == 1
    mean = report["mean"]["per_threshold"][0]
    assert mean["warping_error"] == pytest.approx(0.5 / 256)
    assert mean["warping_mergers"] == 1
    assert report["mean"]["best"]["warping_error"]["threshold"] == 0.5
    # Written atomically: nothing but the JSON file is left beside the folders.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "pred", "scores.json"]


def test_isbi_single_files_membrane_probability(tmp_path):
    gt = membrane_gt()
    membrane = (gt == 0).astype(np.float32)
    pred = tmp_path / "p.tif"
    tifffile.imwrite(pred, membrane)
    gt_path = save_png(tmp_path / "g.png", gt)
    out = tmp_path / "s.json"
    rc = main(["evaluate", str(pred), str(gt_path), "--membrane", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["pairs"][0]["scores"]["per_threshold"]
    assert len(rows) == 9 and all(r["pixel_error"] == 0.0 for r in rows)


def test_instances_mode(tmp_path, capsys):
    gt = np.zeros((10, 12), np.uint16)
    gt[1:4, 1:5] = 1
    gt[6:9, 6:11] = 2
    pred = np.zeros_like(gt)
    pred[1:4, 1:5] = 3
    pred[6:9, 6:8] = 4  # 6 of 15 pixels: not matched at IoU 0.5
    tifffile.imwrite(tmp_path / "p.tif", pred)
    tifffile.imwrite(tmp_path / "g.tif", gt)
    out = tmp_path / "s.json"
    rc = main(
        [
            "evaluate",
            str(tmp_path / "p.tif"),
            str(tmp_path / "g.tif"),
            "--mode",
            "instances",
            "--json",
            str(out),
            "--iou-thresholds",
            "0.3,0.5",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    for column in ("F1@0.5", "P@0.5", "R@0.5", "AP50:95", "AJI", "SEG", "mIoU@0.5", "n_pred"):
        assert column in printed
    report = json.loads(out.read_text())
    scores = report["pairs"][0]["scores"]
    assert set(scores) == INSTANCE_KEYS and set(report["mean"]) == INSTANCE_KEYS
    assert scores["seg"] == pytest.approx(0.5)  # object 1 perfect, object 2 covered < 50%
    assert scores["object_f1"]["0.5"]["tp"] == 1 and scores["object_f1"]["0.5"]["fn"] == 1
    assert scores["object_f1"]["0.3"]["tp"] == 2  # IoU 6/15 = 0.4 > 0.3
    # IoUs 1 and 0.4: one match at every threshold 0.5 ... 0.95, TP / (TP + FP + FN) = 1/3.
    assert scores["average_precision"] == pytest.approx(1 / 3)
    assert list(scores["average_precision_by_threshold"]) == [
        "0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
    assert scores["aji"] == pytest.approx((12 + 6) / (12 + 15))
    assert scores["mean_matched_iou"] == 1.0
    assert (scores["n_pred"], scores["n_gt"]) == (2, 2)


INSTANCE_KEYS = {
    "seg", "average_precision", "aji", "mean_matched_iou", "adapted_rand_error", "v_rand",
    "voi_split", "voi_merge", "iou_foreground", "n_pred", "n_gt", "object_f1",
    "average_precision_by_threshold",
}


def test_instances_mean_pools_counts_and_averages_scores(tmp_path, capsys):
    gt = np.zeros((8, 8), np.uint32)
    gt[0:4, 0:4] = 70000
    gt[5:8, 5:8] = 2
    (tmp_path / "g").mkdir()
    (tmp_path / "p").mkdir()
    tifffile.imwrite(tmp_path / "g" / "a.tif", gt)
    tifffile.imwrite(tmp_path / "g" / "b.tif", gt)
    tifffile.imwrite(tmp_path / "p" / "a.tif", gt)  # perfect
    tifffile.imwrite(tmp_path / "p" / "b.tif", np.where(gt == 2, 9, 0).astype(np.uint32))
    out = tmp_path / "s.json"
    rc = main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--mode", "instances",
               "--json", str(out)])
    assert rc == 0
    assert "pooled" in capsys.readouterr().out
    report = json.loads(out.read_text())
    b = report["pairs"][1]["scores"]
    assert b["average_precision"] == 0.5 and b["aji"] == pytest.approx(9 / 25)
    mean = report["mean"]
    # Scores averaged over the two images ...
    assert mean["average_precision"] == pytest.approx(0.75)
    assert mean["average_precision_by_threshold"]["0.95"] == pytest.approx(0.75)
    assert mean["aji"] == pytest.approx((1 + 9 / 25) / 2)
    assert mean["mean_matched_iou"] == 1.0
    # ... counts summed, and F1 from the pooled counts: TP 3, FP 0, FN 1.
    assert (mean["n_pred"], mean["n_gt"]) == (3, 4)
    assert mean["object_f1"]["0.5"]["f1"] == pytest.approx(6 / 7)
    assert mean["object_f1"]["0.5"]["recall"] == pytest.approx(3 / 4)


def test_a_reference_without_objects_has_no_rand_score(tmp_path, capsys):
    # Its 0/0 would read as a perfect V_rand whatever the prediction holds.
    gt = np.zeros((8, 8), np.uint16)
    objects = gt.copy()
    objects[1:4, 1:4], objects[5:8, 5:8] = 1, 2
    for folder, a, b in (("g", objects, gt), ("p", objects, objects)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "a.tif", a)
        tifffile.imwrite(tmp_path / folder / "b.tif", b)
    out = tmp_path / "s.json"
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--mode", "instances",
                 "--json", str(out)]) == 0
    assert "no object" in capsys.readouterr().out
    report = json.loads(out.read_text())
    empty = report["pairs"][1]["scores"]
    assert empty["v_rand"] is None and empty["adapted_rand_error"] is None
    assert empty["average_precision"] == 0.0
    assert report["mean"]["v_rand"] == 1.0  # the one pair where it is defined


def test_shape_mismatch_returns_2_and_names_the_file(tmp_path, capsys):
    save_png(tmp_path / "pred" / "x.png", membrane_gt((16, 16)))
    save_png(tmp_path / "gt" / "x.png", membrane_gt((16, 15)))
    rc = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.png" in err[0] and "shape" in err[0]


def test_missing_partner_and_bad_input_return_2(tmp_path, capsys):
    save_png(tmp_path / "pred" / "x.png", membrane_gt())
    save_png(tmp_path / "pred" / "y.png", membrane_gt())
    save_png(tmp_path / "gt" / "x.png", membrane_gt())
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    assert "y.png" in capsys.readouterr().err
    (tmp_path / "gt" / "y.png").write_bytes(b"not a png")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    assert "y.png" in capsys.readouterr().err
    labels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    save_png(tmp_path / "gt" / "y.png", labels)  # not binary
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    assert "binary" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing"), str(tmp_path / "gt")]) == 2


@pytest.mark.parametrize("shape, where", [((16, 16), "no cell interior ("),
                                          ((5, 16, 16), "no cell interior in slice 1 (")])
def test_ground_truth_without_interior_is_refused(tmp_path, capsys, shape, where):
    # All membrane: the Rand scores would read perfect (V_rand 1) for any prediction.
    gt = np.broadcast_to(membrane_gt(), shape).copy()
    gt.reshape(-1, 16, 16)[-1 if len(shape) == 2 else 1] = 0
    pred = np.broadcast_to(membrane_gt(), shape).astype(np.float32) / 255
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gt.tif" in err[0] and where in err[0], err
    gt.reshape(-1, 16, 16)[:] = membrane_gt()
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    assert main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif")]) == 0


def test_a_16_bit_probability_file_of_low_values_says_how_it_was_read(tmp_path, capsys):
    from useg.errors import UsegWarning
    from useg.evaluation.files import read_probability

    path = tmp_path / "p.tif"
    tifffile.imwrite(path, np.array([[0, 100], [200, 255]], np.uint16))
    with pytest.warns(UsegWarning, match="16-bit file whose values stay within 0..255"):
        p = read_probability(path)
    assert p.max() == 1.0
    tifffile.imwrite(path, np.array([[0, 100], [200, 255]], np.uint8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UsegWarning)
        assert read_probability(path).max() == 1.0  # 8-bit: nothing to say


def test_isbi_ground_truth_without_zero_is_refused(tmp_path, capsys):
    # Coded 1/2 instead of 0/255: read as all interior, it has no membrane to score against.
    gt = (membrane_gt() > 0).astype(np.uint8) + 1
    save_png(tmp_path / "gt" / "a.png", gt)
    save_png(tmp_path / "pred" / "a.png", membrane_gt())
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a.png" in err and "1 and 2" in err, err


def test_an_empty_instance_prediction_is_said(tmp_path, capsys):
    gt = np.zeros((16, 16), np.uint16)
    gt[4:10, 4:10] = 1
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", np.zeros_like(gt))
    rc = main(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "gt.tif"),
               "--mode", "instances"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning" in err and "pred.tif: no object" in err, err


def test_a_class_map_of_useg_is_not_scored_as_objects(tmp_path, capsys):
    from useg.io.files import RESULT_SOFTWARE
    from useg.io.images import write_image

    gt = np.zeros((16, 16), np.uint16)
    gt[2:6, 2:6], gt[9:14, 9:14] = 1, 2
    tifffile.imwrite(tmp_path / "a.tif", gt)
    classes = write_image(tmp_path / "a_labels.tif", (gt > 0).astype(np.uint8),
                          software=RESULT_SOFTWARE)
    assert main(["evaluate", str(classes), str(tmp_path / "a.tif"), "--mode", "instances"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a_labels.tif" in err and "a_instances" in err, err
    # The same values written by a user (no useg Software tag) are ids like any others.
    tifffile.imwrite(tmp_path / "mine_labels.tif", gt)
    assert main(["evaluate", str(tmp_path / "mine_labels.tif"), str(tmp_path / "a.tif"),
                 "--mode", "instances"]) == 0


def test_an_empty_threshold_list_is_an_argument_error_not_the_files(tmp_path):
    from useg.errors import ConfigError
    from useg.evaluation.files import evaluate_folders

    tifffile.imwrite(tmp_path / "pred.tif", membrane_gt().astype(np.float32) / 255)
    tifffile.imwrite(tmp_path / "gt.tif", membrane_gt())
    with pytest.raises(ConfigError, match=r"^--thresholds must be one or more values"):
        evaluate_folders(tmp_path / "pred.tif", tmp_path / "gt.tif", mode="isbi", thresholds=[])
