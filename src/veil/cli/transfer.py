"""``veil transfer``: do a study's backbones trained on obfuscated images transfer as well?"""

from __future__ import annotations

from typing import Any

import click

from veil.cli.common import fail_cleanly, progress_option, want_progress
from veil.errors import VeilError
from veil.transfer.tasks import ALIASES, TASKS


def _list(text: str | None) -> list[str] | None:
    items = [p.strip() for p in (text or "").split(",") if p.strip()]
    return items or None


def _seeds(text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    try:
        if "," in text:
            return sorted({int(p) for p in text.split(",") if p.strip()})
        return int(text)
    except ValueError:
        raise VeilError(f"--seeds {text!r}: expected a count or a list like 0,1") from None


def _grid(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise VeilError(f"--l2 {text!r}: expected numbers like 1e-4,1e-3") from None
    if not values or any(v < 0 for v in values):
        raise VeilError("--l2 needs one or more strengths >= 0")
    return values


def _tasks_help() -> str:
    lines = ["\b", "Tasks (--task) and what --data points at:"]
    lines += [f"  {name:<8} {text}" for name, text in TASKS.items()]
    lines.append(f"  (aliases: {', '.join(f'{a}={t}' for a, t in ALIASES.items())})")
    lines += ["", "\b", "See docs/transfer.md for the real CIFAR-10, SUN397, CelebA and VOC "
              "downloads."]
    return "\n".join(lines)


@click.command("transfer", epilog=_tasks_help(),
               short_help="Train every backbone of a study on a downstream task.")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The study run folder whose backbones (runs/*/seed*/train-*/model.pt) to use.")
@click.option("--task", required=True, metavar="TASK",
              help=f"Downstream task: {', '.join(TASKS)}.")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True),
              help="The task's data set, in its published format (see Tasks below).")
@click.option("--mode", type=click.Choice(["linear", "finetune"]), default="linear",
              show_default=True,
              help="linear: logistic regression on frozen, cached features (VOC: frozen "
                   "backbone); finetune: train the whole network.")
@click.option("--seeds", default=None, metavar="N|S1,S2",
              help="Which of the study's seeds: the first N, or a list (default: all).")
@click.option("--archs", default=None, metavar="A1,A2", help="Only these architectures.")
@click.option("--conditions", default=None, metavar="C1,C2",
              help="Only backbones trained on these conditions (default: original and every "
                   "method).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: RUN/transfer/<task>-<mode>, where `veil analyze "
                   "RUN` finds it). Resumed when it exists.")
@click.option("--train-split", default=None,
              help="ImageFolder: the training folder (default train); VOC: the image set "
                   "(default trainval).")
@click.option("--test-split", default=None,
              help="ImageFolder: the test folder (default test, else val); VOC: the image set "
                   "(default test; use val for VOC2012).")
@click.option("--partition", type=click.IntRange(1, 10), default=1, show_default=True,
              help="SUN397: which of the ten official train/test partitions.")
@click.option("--train-per-class", type=click.IntRange(min=1), default=100, show_default=True,
              help="Scenes as bare class folders: training images per class (15-Scene: 100).")
@click.option("--year", type=int, default=None, help="VOC: VOC2007 or VOC2012 under VOCdevkit.")
@click.option("--voc-ap", "ap_method", type=click.Choice(["11point", "area"]), default=None,
              help="VOC AP: 11-point (VOC2007's devkit) or area (VOC2010+); default by year.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N images of each split (spread over classes), for a try.")
@click.option("--img-size", type=click.IntRange(min=8), default=None,
              help="Input size (default: each backbone's training size; the resize keeps the "
                   "study's ratio).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="Forward/training precision (default: each backbone's).")
@click.option("--l2", "l2_grid", default=None, metavar="A,B,...",
              help="linear: L2 strengths to choose from on held-out images "
                   "(default 1e-6..1e-1, decades).")
@click.option("--max-iter", type=click.IntRange(min=1), default=None,
              help="linear: L-BFGS iterations per fit (default 300).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="finetune / VOC: epochs (default 5 / 12).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="finetune / VOC: training batch (default 64 / 8).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="finetune: peak lr for a batch of 256 (default 0.1); VOC: for a batch of 16 "
                   "(default 0.02). Scaled linearly with --batch-size.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
              help="finetune / VOC: weight decay (default 1e-4).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="finetune / VOC: stop after this many steps (quick tries).")
@click.option("--min-size", type=click.IntRange(min=16), default=None,
              help="VOC: shorter side fed to the detector (default 600).")
@click.option("--max-size", type=click.IntRange(min=16), default=None,
              help="VOC: longer side cap (default 1000).")
@click.option("--eval-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per forward pass when extracting features or evaluating.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding processes (default: one per core).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's).")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Where decoded pixels and features are cached (default: OUT/cache).")
@progress_option
@fail_cleanly
def transfer_command(run_dir: str, task: str, data_path: str, mode: str, seeds: str | None,
                     archs: str | None, conditions: str | None, out: str | None,
                     train_split: str | None, test_split: str | None, partition: int,
                     train_per_class: int, year: int | None, ap_method: str | None,
                     limit: int | None, img_size: int | None, precision: str | None,
                     l2_grid: str | None, max_iter: int | None, epochs: int | None,
                     batch_size: int | None, lr: float | None, weight_decay: float | None,
                     max_steps: int | None, min_size: int | None, max_size: int | None,
                     eval_batch: int, workers: int | None, threads: int | None, device: str,
                     cache_dir: str | None, progress: bool | None) -> None:
    """Train and evaluate every backbone of a study RUN (each arch, seed, and training
    condition: original and each obfuscation method) on a downstream task, and compare
    the original backbones with the obfuscated ones (mean ± SEM over seeds, paired
    bootstrap CI over test images).

    \b
    veil transfer --run runs/imagenette --task cifar10 --data cifar-10-batches-py
    veil transfer --run runs/imagenette --task scenes --data scene15 --mode finetune
    veil analyze runs/imagenette    # adds the transfer table to the study's analysis
    """
    import dataclasses

    from veil.transfer.detection import DetectionOptions
    from veil.transfer.finetune import FinetuneOptions
    from veil.transfer.linear import LinearOptions
    from veil.transfer.run import TransferConfig, run_transfer
    from veil.transfer.tasks import task_name

    name = task_name(task)

    def given(**values: object) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    linear = dataclasses.replace(LinearOptions(), **given(l2_grid=_grid(l2_grid),
                                                          max_iter=max_iter))
    common = given(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                   max_steps=max_steps)
    tuned = dataclasses.replace(FinetuneOptions(), **common)
    detection = dataclasses.replace(
        DetectionOptions(), **common,
        **given(min_size=min_size, max_size=max_size,
                workers=None if workers is None else min(workers, 8)))
    config = TransferConfig(
        run=run_dir, task=name, data=data_path, mode=mode, out=out, seeds=_seeds(seeds),
        archs=_list(archs), conditions=_list(conditions), train_split=train_split,
        test_split=test_split, partition=partition, train_per_class=train_per_class,
        year=year, ap_method=ap_method, limit=limit, img_size=img_size, precision=precision,
        linear=linear, finetune=tuned, detection=detection, batch_size=eval_batch,
        workers=workers, threads=threads, device=device, cache_dir=cache_dir,
        progress=want_progress(progress), log=lambda m: click.echo(m, err=True))
    summary = run_transfer(config)
    comparison: list[dict[str, Any]] = []
    try:  # the tables are analysis's; scipy/pandas come with the study extra
        from veil.analysis.transfer import write_comparison

        comparison = write_comparison(summary.out)
    except ImportError as exc:
        click.echo(f"note: comparison table skipped ({exc})", err=True)
    click.echo(f"transfer {summary.task} ({summary.mode}) done in {summary.seconds:.1f} s:"
               f" {summary.out}")
    for r in comparison:
        if not r["primary"]:
            continue
        ci = ("" if r["ci_low"] is None
              else f"  95% CI [{r['ci_low']:.2f}, {r['ci_high']:.2f}]  {r['verdict']}")
        click.echo(f"  {r['arch']:<16} original {r['original']:.2f}  {r['method']} "
                   f"{r['obfuscated']:.2f}  drop {r['drop']:.2f}{ci}")
