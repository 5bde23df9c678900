"""`dicom-node train`: train the reference region detector on simulated images (+ optional user datasets).

Pipeline: simulated cases (``inference.simulator.simulate_case``, fixed seeds, heavy randomisation) and optional
YOLO txt / COCO JSON datasets are turned into presentation images (modality LUT, MONOCHROME1 inverted: the first
steps of the card), shrunk to at most ``cache_side`` pixels and cached in a ``.npz`` under ``--cache-dir``. Each
training sample is then augmented (``augment.augment``) and run through the ENGINE's preprocessing
(``inference.preprocessing.preprocess`` with the card template), so training and inference see the same inputs.
The result is exported to ONNX + TorchScript with its card (``export.export_model``) and a TRAINING.md log.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from inference.training.augment import AugmentConfig, augment
from inference.training.data import (
    CLASSES,
    IGNORE_BELOW,
    PRESENT_FRACTION,
    VAL_SEED_OFFSET,
    Sample,
    load_dataset,
    read_image_file,
    sim_plan,
    sim_randomize,
    truths_from_regions,
)
from inference.training.metrics import GroundTruth, ImageResult, Prediction, evaluate_detections

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "inference" / "models" / "reference"
DEFAULT_CACHE = ROOT / "var" / "training-cache"
K = len(CLASSES)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in TRAINING.md)."""

    n_train: int = 1200  # simulated training cases
    n_val: int = 300  # simulated held-out cases (other seeds)
    steps: int = 2000
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    input_size: int = 160
    width: int = 12
    cache_side: int = 320  # cached images are at most this many pixels on their long side
    sim_size: int = 320  # simulator image columns (0: the simulator's default)
    threads: int = 2
    workers: int = 1  # data-loader processes
    eval_every: int = 250
    max_minutes: float = 0.0  # stop early (and still export) after this much training time; 0: no limit
    log_every: int = 50
    extra_datasets: tuple[str, ...] = ()
    extra_weight: float = 0.3  # share of each batch drawn from the extra datasets (when given)
    reuse_cache: bool = False  # reuse simulated caches made with other simulator sources
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ------------------------------------------------------------------------------------------------ image cache


@dataclass
class CachedSet:
    """Presentation images shrunk to ``side``: images (N, side, side) uint16 (top-left aligned, ``shapes`` gives the
    valid rows/cols), boxes (N, K, 4) in the cached frame, frac (N, K) visible fraction (0: absent; for ignore
    regions a value between IGNORE_BELOW and PRESENT_FRACTION)."""

    images: np.ndarray
    shapes: np.ndarray
    boxes: np.ndarray
    frac: np.ndarray
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, i: int) -> np.ndarray:
        r, c = self.shapes[i]
        return self.images[i, :r, :c].astype(np.float32)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=self.images, shapes=self.shapes, boxes=self.boxes, frac=self.frac,
                 keys=np.array(self.keys))  # fmt: skip
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> CachedSet:
        with np.load(path) as z:
            return cls(z["images"], z["shapes"], z["boxes"], z["frac"], [str(k) for k in z["keys"]])

    @classmethod
    def build(cls, items: Sequence[tuple[str, np.ndarray, Sequence[GroundTruth], dict[str, float]]], side: int):
        """From (key, presentation image, truths, {label: visible fraction}) items."""
        n = len(items)
        images = np.zeros((n, side, side), dtype=np.uint16)
        shapes = np.zeros((n, 2), dtype=np.int32)
        boxes = np.zeros((n, K, 4), dtype=np.float32)
        frac = np.zeros((n, K), dtype=np.float32)
        keys = []
        for i, (key, img, truths, fractions) in enumerate(items):
            small, (sx, sy) = shrink(img, side)
            images[i, : small.shape[0], : small.shape[1]] = small
            shapes[i] = small.shape
            for t in truths:
                k = CLASSES.index(t.label)
                boxes[i, k] = np.asarray(t.box, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)
                default = 0.5 * (IGNORE_BELOW + PRESENT_FRACTION) if t.ignore else 1.0
                frac[i, k] = float(fractions.get(t.label, default))
            keys.append(key)
        return cls(images, shapes, boxes, frac, keys)


def shrink(img: np.ndarray, side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Area-resample so the long side is at most ``side``; values rescaled to the full uint16 range.

    Returns the image and the (x, y) scale new / old pixels."""
    img = np.asarray(img, dtype=np.float32)
    rows, cols = img.shape
    lo, hi = float(img.min()), float(img.max())
    s = min(1.0, side / max(img.shape))
    if s < 1.0:
        size = (max(1, round(cols * s)), max(1, round(rows * s)))
        img = np.asarray(Image.fromarray(img, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)
    q = np.zeros(img.shape, np.uint16) if hi <= lo else np.rint((img - lo) / (hi - lo) * 65535).astype(np.uint16)
    return q, (img.shape[1] / cols, img.shape[0] / rows)


def presentation_pixels(ds) -> np.ndarray:
    """Stored pixels -> modality values, MONOCHROME1 inverted (as the card's first steps do in the engine)."""
    from pydicom.pixels import apply_modality_lut

    from inference.preprocessing import stored_pixels

    arr = np.asarray(stored_pixels(ds))
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = arr[0]
    img = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32) if "RescaleSlope" in ds or (
        "ModalityLUTSequence" in ds) else arr.astype(np.float32)  # fmt: skip
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        img = float(img.min()) + float(img.max()) - img
    return img


def sample_pixels(sample: Sample) -> np.ndarray:
    """Presentation image of a dataset sample (DICOM or image file)."""
    if sample.is_dicom:
        import pydicom

        return presentation_pixels(pydicom.dcmread(sample.path))
    return read_image_file(sample.path)


def _simulate_one(args: tuple[int, str, int]) -> tuple[str, np.ndarray, tuple[GroundTruth, ...], dict[str, float]]:
    seed, kind, size = args
    from inference.simulator import simulate_case

    case = simulate_case(seed, kind=kind, randomize=sim_randomize(seed, kind), size=size or None)
    ds = case.dataset
    img = presentation_pixels(ds)
    regions = [
        {"label": r.label, "box_px": None if r.box_px is None else r.box_px.as_tuple(),
         "visible_fraction": float(getattr(r, "visible_fraction", 1.0))}
        for r in case.truth.regions
    ]  # fmt: skip
    truths = truths_from_regions(regions, img.shape[1], img.shape[0])
    fractions = {str(r["label"]).upper(): float(cast(float, r["visible_fraction"])) for r in regions}
    return f"sim-{kind}-{seed}", img, truths, fractions


def simulated_set(n: int, seed0: int, side: int, cache_dir: Path, sim_size: int = 0, workers: int = 2,
                  progress: Callable[[str], None] = print, reuse_stale: bool = False) -> CachedSet:  # fmt: skip
    """Simulate (or load from the cache) ``n`` cases with seeds ``seed0 ..``.

    The cache file is keyed by the arguments and a hash of the simulator's sources; ``reuse_stale`` loads the
    newest cache of the same arguments made with other simulator sources instead of simulating again."""
    import hashlib

    from inference.simulator import __file__ as sim_file

    h = hashlib.sha256()
    for f in sorted(Path(sim_file).parent.rglob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    prefix = f"sim-{seed0}-{n}-{side}-{sim_size}-"
    path = cache_dir / f"{prefix}{h.hexdigest()[:12]}.npz"
    if path.is_file():
        progress(f"cache hit: {path}")
        return CachedSet.load(path)
    stale = sorted(cache_dir.glob(prefix + "*.npz"), key=lambda q: q.stat().st_mtime)
    if reuse_stale and stale:
        progress(f"simulator sources changed since {stale[-1].name} was made; reusing it (--reuse-cache)")
        return CachedSet.load(stale[-1])
    plan = [(s, k, sim_size) for s, k in sim_plan(n, seed0)]
    t0 = time.perf_counter()
    items = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for i, item in enumerate(pool.imap(_simulate_one, plan, chunksize=4)):
                items.append(_shrunk(item, side))
                if (i + 1) % 200 == 0:
                    progress(f"simulated {i + 1}/{n} ({time.perf_counter() - t0:.0f} s)")
    else:
        for i, a in enumerate(plan):
            items.append(_shrunk(_simulate_one(a), side))
            if (i + 1) % 200 == 0:
                progress(f"simulated {i + 1}/{n} ({time.perf_counter() - t0:.0f} s)")
    cs = CachedSet.build(items, side)
    cs.save(path)
    progress(f"simulated {n} cases in {time.perf_counter() - t0:.0f} s -> {path}")
    return cs


def _shrunk(item, side):
    """Shrink early (keeps memory small while simulating); truths are scaled into the shrunk frame."""
    key, img, truths, fr = item
    small, (sx, sy) = shrink(img, side)
    scaled = tuple(GroundTruth(t.label, (t.box[0] * sx, t.box[1] * sy, t.box[2] * sx, t.box[3] * sy), t.ignore)
                   for t in truths)
    return key, small.astype(np.float32), scaled, fr


def dataset_set(path: Path, side: int) -> CachedSet:
    """A user dataset (YOLO txt, COCO JSON, simulated folder) as a cached set."""
    samples, info = load_dataset(path)
    if info.skipped:
        log.warning("%s: skipped boxes of unknown classes: %s", path, dict(info.skipped))
    return CachedSet.build([(s.key, sample_pixels(s), s.truths, {}) for s in samples], side)


# ------------------------------------------------------------------------------------------------ batches


def make_example(img: np.ndarray, boxes: np.ndarray, frac: np.ndarray, card, rng: np.random.Generator | None,
                 aug: AugmentConfig):  # fmt: skip
    """Augment (when ``rng``) and preprocess one image with the engine: returns (tensor (1, S, S), present (K,),
    boxes (K, 4) in [0, 1] of the model input, presence weight (K,))."""
    from inference.preprocessing import preprocess

    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (frac > 0)
    b = np.where(valid[:, None], boxes, 0.0).astype(np.float64)
    f = np.where(valid, frac, 0.0).astype(np.float64)
    if rng is not None:
        img, b, f = augment(img, b, f, rng, aug)
    prep = preprocess(img, card)
    s = float(card.input.width)
    mb = prep.transform.boxes_to_model(b) / s
    mb = np.clip(mb, 0.0, 1.0)
    area_ok = ((mb[:, 2] - mb[:, 0]) * s >= 2) & ((mb[:, 3] - mb[:, 1]) * s >= 2)
    present = (f >= PRESENT_FRACTION) & area_ok
    ignore = (f >= IGNORE_BELOW) & ~present & area_ok
    weight = np.where(ignore, 0.0, 1.0)
    mb = np.where((present | ignore)[:, None], mb, 0.0)
    return (prep.tensor.astype(np.float32), present.astype(np.float32), mb.astype(np.float32),
            weight.astype(np.float32))  # fmt: skip


class _TorchSet:
    """Map-style dataset: index -> augmented example. Randomness: a generator seeded by (seed, epoch-free index)."""

    def __init__(self, sets: list[CachedSet], weights: list[float], n: int, seed: int, card, aug: AugmentConfig):
        self.sets, self.n, self.seed, self.card, self.aug = sets, n, seed, card, aug
        w = np.asarray(weights, dtype=np.float64)
        self.p = w / w.sum()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        rng = np.random.default_rng([self.seed, int(i)])
        s = self.sets[int(rng.choice(len(self.sets), p=self.p))]
        j = int(rng.integers(len(s)))
        x, present, boxes, weight = make_example(s.image(j), s.boxes[j], s.frac[j], self.card, rng, self.aug)
        return torch.from_numpy(x), torch.from_numpy(present), torch.from_numpy(boxes), torch.from_numpy(weight)


# ------------------------------------------------------------------------------------------------ evaluation


def predict_cached(net, cs: CachedSet, card, batch: int = 64) -> list[ImageResult]:
    """Run the torch model on a cached set (no augmentation); boxes in the cached frame."""
    import torch

    from inference.preprocessing import preprocess

    net.eval()
    results = []
    for start in range(0, len(cs), batch):
        idx = range(start, min(len(cs), start + batch))
        preps = [preprocess(cs.image(i), card) for i in idx]
        x = torch.from_numpy(np.stack([p.tensor for p in preps]))
        with torch.no_grad():
            logits, boxes = net(x)
        scores = torch.sigmoid(logits).numpy()
        s = float(card.input.width)
        b = boxes.numpy().astype(np.float64)
        xyxy = np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)
        for n, i in enumerate(idx):
            orig = preps[n].transform.boxes_to_original(xyxy[n] * s)
            preds = tuple(Prediction(CLASSES[k], float(scores[n, k]), tuple(orig[k])) for k in range(K))
            truths = []
            for k in range(K):
                f = float(cs.frac[i, k])
                if f >= IGNORE_BELOW:
                    x0, y0, x1, y1 = (float(v) for v in cs.boxes[i, k])
                    truths.append(GroundTruth(CLASSES[k], (x0, y0, x1, y1),
                                              ignore=f < PRESENT_FRACTION))  # fmt: skip
            results.append(ImageResult(cs.keys[i], tuple(truths), preds))
    net.train()
    return results


# ------------------------------------------------------------------------------------------------ training


def train(cfg: TrainConfig, out_dir: Path = DEFAULT_OUT, cache_dir: Path = DEFAULT_CACHE,
          train_sets: list[CachedSet] | None = None, val_set: CachedSet | None = None,
          progress: Callable[[str], None] = print, export: bool = True) -> dict:  # fmt: skip
    """Train, evaluate on the held-out simulated set, export. Returns a summary dict (also in TRAINING.md)."""
    import torch

    from inference.training.export import export_model, template_card
    from inference.training.model import RegionNet, detection_loss

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    card = template_card(cfg.input_size)
    weights: list[float] = []
    if train_sets is None:
        train_sets = [simulated_set(cfg.n_train, cfg.seed * 10_000, cfg.cache_side, cache_dir, cfg.sim_size,
                                    workers=cfg.threads, progress=progress, reuse_stale=cfg.reuse_cache)]  # fmt: skip
        weights = [1.0]
        if cfg.extra_datasets:
            extra = [dataset_set(Path(p), cfg.cache_side) for p in cfg.extra_datasets]
            train_sets += extra
            weights += [cfg.extra_weight / len(extra)] * len(extra)
            weights[0] = 1.0 - cfg.extra_weight
    else:
        weights = [1.0] * len(train_sets)
    if val_set is None and cfg.n_val:
        val_set = simulated_set(cfg.n_val, VAL_SEED_OFFSET + cfg.seed * 10_000, cfg.cache_side, cache_dir,
                                cfg.sim_size, workers=cfg.threads, progress=progress,
                                reuse_stale=cfg.reuse_cache)  # fmt: skip
    t_data = time.perf_counter() - t_start

    net = RegionNet(K, cfg.input_size, cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = min(100, cfg.steps // 10 + 1)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm))) * 0.98 + 0.02

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    dset = _TorchSet(train_sets, weights, cfg.steps * cfg.batch, cfg.seed, card, cfg.augment)
    loader: Any = torch.utils.data.DataLoader(
        cast(Any, dset), batch_size=cfg.batch, shuffle=False, num_workers=cfg.workers, drop_last=True,
        persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=_worker_init if cfg.workers > 0 else None,
    )  # fmt: skip
    history: list[dict] = []
    evals: list[dict] = []
    t_train = time.perf_counter()
    running: dict[str, float] = {}
    stopped_early = 0
    net.train()
    for step, (x, present, boxes, weight) in enumerate(loader):
        logits, pred = net(x)
        loss, parts = detection_loss(logits, pred, present, boxes, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + float(v)
        if (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == cfg.steps:
            n = 1 if step == 0 else (step % cfg.log_every) + 1
            row = {"step": step + 1, **{k: round(v / n, 4) for k, v in running.items()},
                   "lr": round(float(sched.get_last_lr()[0]), 6), "s": round(time.perf_counter() - t_train, 1)}  # fmt: skip
            history.append(row)
            progress(json.dumps(row))
            running = {}
        if cfg.max_minutes and time.perf_counter() - t_train > 60.0 * cfg.max_minutes:
            stopped_early = step + 1
            progress(f"time limit of {cfg.max_minutes} min reached: stopping at step {step + 1}/{cfg.steps}")
            break
        if val_set is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            rep = evaluate_detections(predict_cached(net, val_set, card), CLASSES)
            evals.append({"step": step + 1, "ap50": rep.ap50, "map_coco": rep.map_coco})
            progress(f"step {step + 1}: held-out AP50 {_fmt(rep.ap50)} mAP {rep.map_coco:.3f}")
            cache_dir.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), cache_dir / "checkpoint.pt")
    t_train = time.perf_counter() - t_train
    net.eval()
    summary: dict = {
        "config": _cfg_dict(cfg),
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "history": history,
        "evals": evals,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "sets": [len(s) for s in train_sets],
        "stopped_early_at_step": stopped_early,
    }
    if val_set is not None:
        rep = evaluate_detections(predict_cached(net, val_set, card), CLASSES)
        summary["heldout"] = rep.as_dict()
        summary["heldout_markdown"] = rep.to_markdown(f"held-out simulated set ({len(val_set)} cases, torch)")
        progress(summary["heldout_markdown"])
    if export:
        metrics = {"heldout_simulated_ap50": {k: round(v, 4) for k, v in summary.get("heldout", {}).get(
            "ap50", {}).items() if v == v}} if val_set is not None else None  # fmt: skip
        card_path = export_model(net, out_dir, metrics=metrics)
        summary["card"] = str(card_path)
        progress(f"exported {card_path}")
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    return summary


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in d.items())


def _cfg_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["extra_datasets"] = list(cfg.extra_datasets)
    return d


def write_training_log(summary: dict, path: Path, command: str) -> None:
    """TRAINING.md: command, configuration, conditions, wall times, loss curve and held-out numbers."""
    h = summary["history"]
    lines = [
        "# Training log of the reference region detector",
        "",
        f"Command: `{command}`  ",
        f"Machine: {summary['machine']} (CPU only; other engineers' jobs shared the cores)  ",
        f"Wall time: data {summary['data_seconds']} s (simulation + cache), training {summary['train_seconds']} s, "
        f"total {summary.get('total_seconds', '?')} s  ",
        f"Training images per set: {summary['sets']}"
        + (f"  \nStopped early by the time limit at step {summary['stopped_early_at_step']}"
           if summary.get("stopped_early_at_step") else ""),
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(summary["config"], indent=1),
        "```",
        "",
        "## Loss (mean since the previous row)",
        "",
        "| step | total | presence BCE | L1 | 1-GIoU | lr | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in h[:: max(1, len(h) // 25)] + ([h[-1]] if h else []):
        lines.append(f"| {row['step']} | {row['total']} | {row['cls']} | {row['l1']} | {row['giou']} | {row['lr']} | "
                     f"{row['s']} |")  # fmt: skip
    if summary.get("evals"):
        lines += ["", "## Held-out AP50 during training", ""]
        for e in summary["evals"]:
            lines.append(f"- step {e['step']}: {_fmt(e['ap50'])}, mAP@[.5:.95] {e['map_coco']:.3f}")
    if summary.get("heldout_markdown"):
        lines += ["", "## Held-out simulated set at the end (torch model, before export)", "",
                  summary["heldout_markdown"]]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ CLI


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (model.onnx, model.pt, card.yaml)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where simulated images are cached (.npz)")
    p.add_argument("--n-train", type=int, default=d.n_train, help="simulated training cases")
    p.add_argument("--n-val", type=int, default=d.n_val, help="simulated held-out cases")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--input-size", type=int, default=d.input_size, help="model input side in pixels (x32)")
    p.add_argument("--width", type=int, default=d.width, help="channels of the first conv block")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads and simulation processes")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loader processes")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--max-minutes", type=float, default=d.max_minutes,
                   help="stop training after this many minutes (0: run all steps)")  # fmt: skip
    p.add_argument("--negative-patches", type=float, default=0.0,
                   help="probability of training on a small patch (mostly limbs/background: regions absent)")  # fmt: skip
    p.add_argument("--reuse-cache", action="store_true",
                   help="reuse simulated caches made with earlier simulator sources")  # fmt: skip
    p.add_argument("--dataset", action="append", default=[], metavar="PATH",
                   help="extra training data: YOLO txt folder or COCO JSON (repeatable)")  # fmt: skip
    p.add_argument("--extra-weight", type=float, default=d.extra_weight,
                   help="share of each batch drawn from --dataset data")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig(
        n_train=args.n_train, n_val=args.n_val, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
        input_size=args.input_size, width=args.width, threads=args.threads, workers=args.workers,
        eval_every=args.eval_every, max_minutes=args.max_minutes, extra_datasets=tuple(args.dataset),
        extra_weight=args.extra_weight, reuse_cache=args.reuse_cache,
        augment=AugmentConfig(p_patch=args.negative_patches),
    )  # fmt: skip
    summary = train(cfg, args.out, args.cache_dir, progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_training_log(summary, args.out / "TRAINING.md", "dicom-node train " + " ".join(_argv_of(args)))
    print(f"done in {summary['total_seconds']} s; card {summary.get('card')}")
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    d = TrainConfig()
    out = []
    for name, default in (("n_train", d.n_train), ("n_val", d.n_val), ("steps", d.steps), ("batch", d.batch),
                          ("lr", d.lr), ("seed", d.seed), ("input_size", d.input_size), ("width", d.width),
                          ("max_minutes", d.max_minutes)):  # fmt: skip
        v = getattr(args, name)
        if v != default:
            out += [f"--{name.replace('_', '-')}", str(v)]
    if args.negative_patches:
        out += ["--negative-patches", str(args.negative_patches)]
    if args.reuse_cache:
        out.append("--reuse-cache")
    for ds in args.dataset:
        out += ["--dataset", str(ds)]
    return out
