"""Cellpose 3 peer for the GBM-40 H&E nuclei benchmark (issue #13), trained from scratch.

Run it with the peer virtual environment's Python, not the project's (Cellpose pins numpy < 2.1
and is not a dependency of useg)::

    python3 -m venv /work/peer_venv
    /work/peer_venv/bin/pip install torch==2.13.0
    /work/peer_venv/bin/pip install "cellpose<4"
    nice -n 19 /work/peer_venv/bin/python bench/peers/cellpose_nuclei.py --minutes 30 --threads 2 \\
        --out bench/results/peers/cellpose_gbm40

What it does, on the split of the data set's PROVENANCE.md (train gbm01-30, choose on gbm31-35,
report gbm36-40):

1. Training: Cellpose 3's own ``train.train_seg`` on a fresh ``CPnet`` (its residual U-Net, no
   pretrained weights; nothing is downloaded: any download attempt raises at once). Inputs follow
   Cellpose 3's convention for one-colour data, ``channels=[0, 0]``: the mean of R, G and B as the
   channel to segment and an empty second channel (``--input rgb`` feeds the three colours instead,
   ``nchan=3``), each channel scaled to its 1st..99th percentile. ``diam_mean`` (the size training
   rescales nuclei to) is the mean Cellpose diameter of the training labels, so images are used at
   their native scale, and inference is told that same diameter (no size model, no test labels).
   Optimiser and learning rate are the Cellpose 3 command line's defaults for training from
   scratch (SGD, 0.2, momentum 0.9, weight decay 1e-5, batch 8, 224x224 crops, every training
   image once an epoch). ``--minutes`` is a wall-clock budget that covers the flow targets, a
   timing probe and the training itself: the number of epochs is the time left after the probe
   divided by an epoch's time estimated from one batch on a throw-away network, less a 10%
   margin for a machine whose load changes (``peer.json`` reports the time actually used).
2. Selection on the validation images only: checkpoints saved during training (``--checkpoints``
   of them, about evenly spaced, the last one the end of training) x a grid of ``flow_threshold`` x
   ``cellprob_threshold``, scored by object F1 at IoU > 0.5 pooled over the validation images
   (matcher below). Ties go to the later checkpoint, then to the earlier grid point.
3. Output: ``gbmNN_instances.tif`` (uint16 instance ids) for every validation and test image, made
   by ``CellposeModel.eval`` with the chosen checkpoint and thresholds, and ``peer.json``. Test
   labels are never opened; scoring the test images is the benchmark's job.

Notes. Cellpose 3's schedule warms the learning rate up from 0 over the first 10 epochs, so a
budget of a few epochs learns next to nothing (val F1 0 at 2 minutes on one thread). Cellpose 4
(CP-SAM) is no peer here: ``CellposeModel(pretrained_model=None)`` raises "Must specify a
pretrained model, training from scratch is not implemented", its command line swaps in 'cpsam',
and the default weights are fetched from a model hub at construction (offline: URLError).
StarDist 0.9.2 with tensorflow-cpu 2.21 does install and train from scratch offline (with
``Config2D(train_tensorboard=False)``: TensorBoard is not installed with it), but is not wired in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

DATASET = "gbm40_nuclei_he"
SAFETY = 0.9  # share of the time left after the probe that the planned epochs may fill


def parse_ids(text: str) -> list[int]:
    """Parse '1-30' or '1,3,5-9' into a sorted list of image numbers."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-", 1))
            if hi < lo:
                raise argparse.ArgumentTypeError(f"empty range {part!r}")
            ids.update(range(lo, hi + 1))
        else:
            ids.add(int(part))
    if not ids:
        raise argparse.ArgumentTypeError("no image ids given")
    return sorted(ids)


def parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def default_data_dir() -> Path:
    env = os.environ.get("USEG_DATA")
    if env:
        return Path(env).expanduser() / DATASET
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / DATASET


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help=f"data set folder (default: $USEG_DATA/{DATASET}, else "
                        f"../shared/data/{DATASET} beside the repository)")
    p.add_argument("--train-ids", type=parse_ids, default=parse_ids("1-30"))
    p.add_argument("--val-ids", type=parse_ids, default=parse_ids("31-35"))
    p.add_argument("--test-ids", type=parse_ids, default=parse_ids("36-40"))
    p.add_argument("--minutes", type=float, required=True,
                   help="wall-clock training budget (flow targets + timing probe + training)")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP / numba / OpenCV threads")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--input", choices=("gray", "rgb"), default="gray",
                   help="gray: Cellpose's channels=[0,0] (RGB mean + empty channel, nchan=2); "
                        "rgb: the three colours (nchan=3)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 0.2 for SGD, the Cellpose 3 command line's "
                        "default from scratch; 0.005 for AdamW, train_seg's default)")
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--checkpoints", type=int, default=3,
                   help="evenly spaced checkpoints compared on validation (the last = end)")
    p.add_argument("--flow-thresholds", type=parse_floats, default=parse_floats("0.2,0.4,0.6,0.8"))
    p.add_argument("--cellprob-thresholds", type=parse_floats,
                   default=parse_floats("-2,-1,0,1,2"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mkldnn", choices=("on", "off"), default="on",
                   help="Cellpose's MKL-DNN path on CPU (its default: on)")
    p.add_argument("--keep-model", action="store_true",
                   help="copy the chosen checkpoint to OUT/cellpose_model.pt")
    return p


def limit_threads(n: int) -> None:
    """Set thread counts before numpy / torch / numba / OpenCV are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)


# --------------------------------------------------------------------------------------------
# Object matching (written for this script; the benchmark may score with its own matcher)
# --------------------------------------------------------------------------------------------

def match_counts(pred, gt, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """Return (true positives, predicted objects, annotated objects) at IoU > iou_threshold.

    Instance ids need not be consecutive; 0 is background. With a threshold of 0.5 or more a
    pair above it is the only one for either object (two disjoint objects cannot each cover more
    than half of the union with a third), so counting pairs gives a one-to-one matching; this is
    asserted.
    """
    import numpy as np

    p = np.asarray(pred).ravel()
    g = np.asarray(gt).ravel()
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch {np.shape(pred)} vs {np.shape(gt)}")
    p_ids, p_idx = np.unique(p, return_inverse=True)
    g_ids, g_idx = np.unique(g, return_inverse=True)
    # index 0 is background when present; shift so that background is always index 0
    if p_ids[0] != 0:
        p_idx = p_idx + 1
        p_ids = np.concatenate([[0], p_ids])
    if g_ids[0] != 0:
        g_idx = g_idx + 1
        g_ids = np.concatenate([[0], g_ids])
    n_p, n_g = len(p_ids), len(g_ids)
    area_p = np.bincount(p_idx, minlength=n_p)
    area_g = np.bincount(g_idx, minlength=n_g)
    both = (p_idx > 0) & (g_idx > 0)
    pair = p_idx[both].astype(np.int64) * n_g + g_idx[both]
    pair_ids, inter = np.unique(pair, return_counts=True)
    pi, gi = pair_ids // n_g, pair_ids % n_g
    iou = inter / (area_p[pi] + area_g[gi] - inter)
    hit = iou > iou_threshold
    tp = int(hit.sum())
    if iou_threshold >= 0.5:
        assert len(np.unique(pi[hit])) == tp and len(np.unique(gi[hit])) == tp
    return tp, n_p - 1, n_g - 1


def f1_from_counts(tp: int, n_pred: int, n_gt: int) -> float:
    return 1.0 if n_pred + n_gt == 0 else 2.0 * tp / (n_pred + n_gt)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lr is None:
        args.lr = 0.2 if args.optimizer == "sgd" else 0.005
    wall0 = time.time()
    limit_threads(args.threads)

    data_dir = (args.data or default_data_dir()).resolve()
    train_ids, val_ids, test_ids = args.train_ids, args.val_ids, args.test_ids
    overlap = (set(train_ids) & set(val_ids)) | ((set(train_ids) | set(val_ids)) & set(test_ids))
    if overlap:
        sys.exit(f"train, validation and test ids must be disjoint; shared: {sorted(overlap)}")
    if not (data_dir / "images").is_dir():
        sys.exit(f"data set not found: {data_dir}")

    import logging
    import socket

    import numpy as np
    import tifffile
    import torch

    socket.setdefaulttimeout(10)  # belt and braces: nothing below should touch the network
    import cellpose
    import cellpose.models
    import cellpose.utils
    from cellpose import dynamics, models, train, transforms, utils
    from cellpose.version import version as cellpose_version

    def refuse_download(url, *a, **k):
        raise RuntimeError(f"offline peer: refusing to download {url}")

    cellpose.utils.download_url_to_file = refuse_download
    cellpose.models.utils.download_url_to_file = refuse_download

    try:
        import cv2
        cv2.setNumThreads(args.threads)
    except Exception:  # pragma: no cover - OpenCV is a Cellpose dependency
        pass
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # network initialisation; train_seg seeds numpy per epoch
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    log = logging.getLogger("peer")
    device = torch.device("cpu")
    load_start = os.getloadavg()

    def image_path(i: int) -> Path:
        return data_dir / "images" / f"gbm{i:02d}.tif"

    def read_image(i: int):
        img = tifffile.imread(image_path(i))
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"{image_path(i)}: expected H x W x 3, got {img.shape}")
        return img

    labelled_ids = set(train_ids) | set(val_ids)

    def read_labels(i: int):
        if i not in labelled_ids or i in test_ids:
            raise RuntimeError(f"refusing to read labels of image {i} (not train/validation)")
        return tifffile.imread(data_dir / "labels" / f"gbm{i:02d}.tif")

    nchan = 2 if args.input == "gray" else 3

    def to_input(img):
        """H x W x 3 uint8 -> C x H x W float32, Cellpose's percentile scaling per channel."""
        x = img.astype(np.float32)
        if args.input == "gray":
            chans = np.stack([x.mean(axis=-1), np.zeros(x.shape[:2], np.float32)])
        else:
            chans = np.ascontiguousarray(x.transpose(2, 0, 1))
        for c in range(chans.shape[0]):
            if np.ptp(chans[c]) > 0:
                chans[c] = transforms.normalize99(chans[c])
        return chans.astype(np.float32)

    t = time.time()
    x_train = [to_input(read_image(i)) for i in train_ids]
    y_train = [read_labels(i).astype(np.int32) for i in train_ids]
    x_val = [to_input(read_image(i)) for i in val_ids]
    y_val = [read_labels(i) for i in val_ids]
    x_test = [to_input(read_image(i)) for i in test_ids]
    t_load = time.time() - t

    diam_train = [float(utils.diameters(lb)[0]) for lb in y_train]
    diam_mean = float(np.mean(diam_train))
    log.info("training diameters: mean %.2f px (min %.2f, max %.2f)", diam_mean,
             min(diam_train), max(diam_train))

    def new_model(pretrained=False):
        return models.CellposeModel(gpu=False, device=device, pretrained_model=pretrained,
                                    model_type=None, diam_mean=diam_mean, nchan=nchan,
                                    mkldnn=args.mkldnn == "on")

    workdir = Path(tempfile.mkdtemp(prefix="cellpose_peer_"))
    train_kwargs = dict(normalize=False, channels=None, channel_axis=None, rgb=False,
                        learning_rate=args.lr, weight_decay=args.weight_decay, momentum=0.9,
                        SGD=args.optimizer == "sgd", batch_size=args.batch_size, bsize=224,
                        rescale=True, save_path=str(workdir), min_train_masks=5)
    try:
        # ---- training, all inside the wall-clock budget -------------------------------------
        budget_s = args.minutes * 60.0
        t_budget0 = time.time()
        cpu_budget0 = time.process_time()
        deadline = t_budget0 + budget_s

        t = time.time()
        flows = dynamics.labels_to_flows([lb.copy() for lb in y_train], device=device)
        t_flows = time.time() - t

        # timing probe: one batch on a throw-away network, times the batches of an epoch
        t = time.time()
        probe = new_model()
        batches = math.ceil(len(x_train) / args.batch_size)
        train.train_seg(probe.net, train_data=x_train, train_labels=flows, n_epochs=1,
                        nimg_per_epoch=min(args.batch_size, len(x_train)),
                        model_name="probe", save_every=10 ** 9, **train_kwargs)
        probe_s = time.time() - t
        epoch_probe_s = probe_s * batches
        del probe

        left = deadline - time.time()
        n_epochs = int(SAFETY * left // epoch_probe_s)
        over_budget = n_epochs < 1
        n_epochs = max(1, n_epochs)
        n_ckpt = max(1, min(args.checkpoints, n_epochs))
        save_every = max(1, math.ceil(n_epochs / n_ckpt))
        log.info("probe epoch %.1f s, %.1f s left: training %d epochs, checkpoint every %d",
                 epoch_probe_s, left, n_epochs, save_every)

        torch.manual_seed(args.seed)
        model = new_model()
        n_params = int(sum(p.numel() for p in model.net.parameters()))
        t = time.time()
        final_path, train_losses, _ = train.train_seg(
            model.net, train_data=x_train, train_labels=flows, n_epochs=n_epochs,
            model_name="peer", save_every=save_every, save_each=True, **train_kwargs)
        t_train = time.time() - t
        t_budget = time.time() - t_budget0
        cpu_budget = time.process_time() - cpu_budget0

        checkpoints = {n_epochs: Path(final_path)}
        for iepoch in range(save_every, n_epochs - 1, save_every):
            path = Path(f"{final_path}_epoch_{iepoch:04d}")
            if path.exists():
                checkpoints[iepoch + 1] = path  # saved after epoch index iepoch: iepoch+1 epochs
        log.info("trained in %.1f s (budget %.1f s); checkpoints after epochs %s",
                 t_budget, budget_s, sorted(checkpoints))

        # ---- selection on validation images -------------------------------------------------
        t = time.time()
        results = []
        best = None
        for epochs in sorted(checkpoints, reverse=True):
            cp = new_model(str(checkpoints[epochs]))
            outs = []
            for x in x_val:
                _, fl, _ = cp.eval(x, channel_axis=0, channels=None, normalize=False,
                                   diameter=diam_mean, compute_masks=False)
                outs.append((fl[1], fl[2]))
            for ft in args.flow_thresholds:
                for ct in args.cellprob_thresholds:
                    tp = n_pred = n_gt = 0
                    for (dp, prob), gt in zip(outs, y_val, strict=True):
                        masks = dynamics.resize_and_compute_masks(
                            dp, prob, niter=200, cellprob_threshold=ct, flow_threshold=ft,
                            interp=True, min_size=15, max_size_fraction=0.4, resize=None,
                            device=device)
                        a, b, c = match_counts(masks, gt)
                        tp, n_pred, n_gt = tp + a, n_pred + b, n_gt + c
                    row = dict(epochs=epochs, flow_threshold=ft, cellprob_threshold=ct,
                               f1=f1_from_counts(tp, n_pred, n_gt), tp=tp,
                               fp=n_pred - tp, fn=n_gt - tp)
                    results.append(row)
                    if best is None or row["f1"] > best["f1"]:
                        best = row
            log.info("checkpoint %d epochs: best val F1 so far %.4f", epochs, best["f1"])
        t_select = time.time() - t

        # ---- outputs ------------------------------------------------------------------------
        t = time.time()
        chosen = new_model(str(checkpoints[best["epochs"]]))
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        val_counts = [0, 0, 0]
        for ids, xs, gts in ((val_ids, x_val, y_val), (test_ids, x_test, None)):
            for k, (i, x) in enumerate(zip(ids, xs, strict=True)):
                masks, _, _ = chosen.eval(x, channel_axis=0, channels=None, normalize=False,
                                          diameter=diam_mean,
                                          flow_threshold=best["flow_threshold"],
                                          cellprob_threshold=best["cellprob_threshold"])
                masks = np.asarray(masks)
                if masks.max() > np.iinfo(np.uint16).max:
                    raise RuntimeError(f"image {i}: more than 65535 objects")
                name = f"gbm{i:02d}_instances.tif"
                tifffile.imwrite(args.out / name, masks.astype(np.uint16), compression="zlib")
                written.append(name)
                if gts is not None:
                    counts = match_counts(masks, gts[k])
                    val_counts = [s + v for s, v in zip(val_counts, counts, strict=True)]
        t_predict = time.time() - t
        val_f1_written = f1_from_counts(*val_counts)
        if args.keep_model:
            shutil.copyfile(checkpoints[best["epochs"]], args.out / "cellpose_model.pt")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    cpu_name = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu_name = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass

    report = {
        "peer": "cellpose",
        "version": cellpose_version,
        "versions": {"cellpose": cellpose_version, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "script": "bench/peers/cellpose_nuclei.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "offline": True,
        "pretrained_weights": None,
        "data": {"dir": str(data_dir), "train_ids": train_ids, "val_ids": val_ids,
                 "test_ids": test_ids, "test_labels_read": False},
        "model": {
            "architecture": "Cellpose 3 CPnet (residual U-Net with style vector), "
                            "nbase " + str(model.nbase) + ", random initialisation",
            "parameters": n_params,
            "nchan": nchan,
            "input": ("channels=[0,0]: mean of R,G,B + empty channel" if args.input == "gray"
                      else "R,G,B"),
            "normalisation": "per channel, 1st..99th percentile -> 0..1 (transforms.normalize99)",
            "diam_mean": diam_mean,
            "diameter_at_inference": diam_mean,
            "train_diameters": {"mean": diam_mean, "min": min(diam_train),
                                "max": max(diam_train)},
            "mkldnn": args.mkldnn == "on",
        },
        "training": {
            "budget_minutes": args.minutes,
            "epochs": n_epochs,
            "epochs_chosen": best["epochs"],
            "checkpoints": sorted(checkpoints),
            "over_budget": over_budget,
            "planned_share_of_time_left": SAFETY,
            "images_per_epoch": len(x_train),
            "batch_size": args.batch_size,
            "crop": 224,
            "optimizer": args.optimizer,
            "learning_rate": args.lr,
            "momentum": 0.9 if args.optimizer == "sgd" else None,
            "weight_decay": args.weight_decay,
            "lr_schedule": "Cellpose 3 train_seg: linear warm-up over 10 epochs, halvings over "
                           "the last 50 (n_epochs > 100) or 100 (n_epochs > 300) epochs",
            "augmentation": "Cellpose 3 random_rotate_and_resize (rotation, flip, scale 0.75-1.25)",
            "seed": args.seed,
            "train_loss_first_last": [float(train_losses[0]), float(train_losses[-1])],
            "train_losses": [round(float(v), 5) for v in train_losses],
        },
        "selection": {
            "on": "validation images only",
            "metric": "object F1 at IoU > 0.5 (one-to-one), TP/FP/FN pooled over the images",
            "grid": {"epochs": sorted(checkpoints), "flow_threshold": args.flow_thresholds,
                     "cellprob_threshold": args.cellprob_thresholds},
            "fixed": {"min_size": 15, "max_size_fraction": 0.4, "niter": 200},
            "chosen": {"epochs": best["epochs"], "flow_threshold": best["flow_threshold"],
                       "cellprob_threshold": best["cellprob_threshold"]},
            "val_f1": best["f1"],
            "val_counts": {"tp": best["tp"], "fp": best["fp"], "fn": best["fn"]},
            "val_f1_of_written_files": val_f1_written,
            "results": results,
        },
        "outputs": written,
        "timing": {
            "threads": args.threads,
            "cpu": cpu_name,
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "load_s": round(t_load, 2),
            "flows_s": round(t_flows, 2),
            "probe_batch_s": round(probe_s, 2),
            "probe_epoch_s": round(epoch_probe_s, 2),
            "train_s": round(t_train, 2),
            "epoch_s_measured": round(t_train / n_epochs, 2),
            "budget_used_s": round(t_budget, 2),
            "budget_cpu_s": round(cpu_budget, 2),
            "selection_s": round(t_select, 2),
            "predict_s": round(t_predict, 2),
            "total_s": round(time.time() - wall0, 2),
        },
    }
    with open(args.out / "peer.json", "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"cellpose {cellpose_version}: {n_epochs} epochs in {t_budget:.0f} s "
          f"(budget {budget_s:.0f} s); chosen epochs {best['epochs']}, "
          f"flow_threshold {best['flow_threshold']}, cellprob_threshold "
          f"{best['cellprob_threshold']}: val F1@0.5 {best['f1']:.4f} "
          f"(written files {val_f1_written:.4f}); total {time.time() - wall0:.0f} s -> "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
