"""useg report: the run report page, written at the end of useg train and by useg report."""

import base64
import io
import json
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from PIL import Image

from useg.cli import main
from useg.errors import UsegWarning
from useg.report import REPORT, report_after_training, write_report
from useg.report.gather import gallery, read_run
from useg.report.page import SECTIONS
from useg.training.config import TrainConfig
from useg.training.run_folder import resume_config, saved_config
from useg.workflows.synthetic import make_dataset

TINY = ["--width", "2", "--depth", "1", "--tile", "36", "--workers", "0", "--seed", "3"]
PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run with validation images, trained by useg train (which writes the report)."""
    root = tmp_path_factory.mktemp("report")
    make_dataset(root / "train", n_images=2, shape=(64, 64), seed=1)
    make_dataset(root / "val", n_images=2, shape=(64, 64), seed=2)
    out = root / "run"
    argv = ["train", "--images", str(root / "train/images"), "--labels",
            str(root / "train/labels"), "--val-images", str(root / "val/images"),
            "--val-labels", str(root / "val/labels"), "--out", str(out), "--iterations", "4",
            "--val-every", "2", "--log-every", "2", "--checkpoint-every", "2", "--quiet", *TINY]
    assert main(argv) == 0
    return out


def _images(html):
    return [base64.b64decode(m) for m in PNG_URI.findall(html)]


def test_train_writes_a_self_contained_report(run):
    html = (run / REPORT).read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    # Self-contained: no script, every image inline, nothing fetched.
    assert "<script" not in html
    assert not re.search(r'(src|href)="(?!data:)', html)
    # Curves, then four panels per validation image.
    assert len(_images(html)) == 1 + 4 * 2
    assert "synth_000.tif (validation image)" in html
    assert "training image" not in html


def test_report_images_decode_as_png(run):
    for data in _images((run / REPORT).read_text()):
        picture = Image.open(io.BytesIO(data))
        picture.verify()
        assert picture.format == "PNG"


def test_command_recorded_and_shown_with_the_config(run):
    config = json.loads((run / "config.json").read_text())
    command = config["command"]
    assert command[:2] == ["useg", "train"] and "--val-every" in command
    html = (run / REPORT).read_text()
    assert f"useg train --images {command[3]}" in html
    assert "&quot;label_mode&quot;: &quot;binary&quot;" in html  # config.json, escaped
    # The command is a record, not a setting: a resumed run keeps it and is not refused.
    saved = saved_config(run)
    other = TrainConfig.from_dict({**saved.to_dict(), "command": ["useg", "train", "other"]})
    assert resume_config(other, run)[0].command == command


def test_gallery_predicts_as_validation_did(run):
    # The gallery predicts the files as useg predict does; validation predicted its samples:
    # the same predictions, so the same foreground IoU for the best model.
    record = read_run(run)
    images, notes = gallery(record, limit=6, device="cpu")
    assert [g.split for g in images] == ["validation", "validation"] and not notes
    mean = sum(g.scores["IoU foreground"] for g in images) / len(images)
    assert mean == pytest.approx(record.header["val"]["val_iou"], abs=1e-6)


def test_report_cli_and_a_run_without_validation_or_command(run, tmp_path, capsys):
    copy = tmp_path / "old run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["command"]  # as a run folder of an earlier useg
    config["labels"]["data"].update(val_images=None, val_labels=None)
    (copy / "config.json").write_text(json.dumps(config))
    page = tmp_path / "page.html"
    assert main(["report", str(copy), "--out", str(page), "--max-images", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {page}"
    html = page.read_text()
    assert "synth_000.tif (training image)" in html and "synth_001" not in html
    assert "The run had no validation images" in html
    assert "Showing the first 1 of 2 training images" in html
    assert "config.json records no command" in html


@pytest.mark.parametrize("case", ["missing", "no config", "incomplete config", "no model"])
def test_report_cli_errors(run, tmp_path, capsys, case):
    folder = tmp_path / "run"
    if case != "missing":
        folder.mkdir()
    if case == "incomplete config":
        (folder / "config.json").write_text("{}")
    if case == "no model":
        shutil.copy(run / "config.json", folder / "config.json")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("useg report: error: ") and err.count("\n") == 1, err
    assert not (folder / REPORT).exists()


def test_a_failing_report_warns_and_keeps_the_model(run, tmp_path, monkeypatch):
    import useg.report.build

    def broken(page):
        raise RuntimeError("no page today")

    monkeypatch.setattr(useg.report.build, "render_page", broken)
    before = (run / "best.safetensors").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert report_after_training(run, device="cpu") is None
    messages = [str(w.message) for w in caught if issubclass(w.category, UsegWarning)]
    assert len(messages) == 1 and "no page today" in messages[0] and "\n" not in messages[0]
    assert (run / "best.safetensors").read_bytes() == before
    with pytest.raises(RuntimeError):
        write_report(run, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


# ----------------------------------------------------------------------------------------------
# In a browser: CI installs Debian's chromium (apt-get install -y chromium).

_BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
_FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
          "--virtual-time-budget=5000"]
# Marks the page's body with how many images loaded and how many did not.
_PROBE = """<script>addEventListener("load", () => {
  const all = [...document.images];
  const ok = all.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-loaded", ok);
  document.body.setAttribute("data-broken", all.length - ok);
});</script>"""


def _browse(*args, timeout=90):
    return subprocess.run([_BROWSER, *_FLAGS, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.skipif(_BROWSER is None, reason="no chromium binary found (Debian/Ubuntu: "
                    "apt-get install -y chromium)")
def test_report_renders_in_chromium(run, tmp_path):
    html = (run / REPORT).read_text()
    images = len(_images(html))
    # The page itself: a screenshot, and no console message (errors, failed loads).
    shot = tmp_path / "shot.png"
    result = _browse("--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                     "--window-size=1200,1600", (run / REPORT).as_uri())
    assert shot.exists(), result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    picture = Image.open(shot).convert("L")
    assert picture.size == (1200, 1600)
    assert np.unique(np.asarray(picture)).size > 50  # rendered content, not a blank page
    # A copy with a probe: every image decoded by the browser.
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", _PROBE + "</body>"))
    dom = _browse("--dump-dom", probed.as_uri()).stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom
    assert f'data-loaded="{images}"' in dom and 'data-broken="0"' in dom, dom[-500:]
