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
    assert "SEG" in capsys.readouterr().out
    scores = json.loads(out.read_text())["pairs"][0]["scores"]
    assert scores["seg"] == pytest.approx(0.5)  # object 1 perfect, object 2 covered < 50%
    assert scores["object_f1"]["0.5"]["tp"] == 1 and scores["object_f1"]["0.5"]["fn"] == 1
    assert scores["object_f1"]["0.3"]["tp"] == 2  # IoU 6/15 = 0.4 > 0.3


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
