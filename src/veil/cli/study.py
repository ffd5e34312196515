"""``veil study``: train and evaluate models on original vs. face-obfuscated images."""

from __future__ import annotations

import os
from typing import Any

import click

from veil.cli.common import fail_cleanly, progress_option, want_progress
from veil.datasets import LAYOUTS
from veil.errors import VeilError
from veil.obfuscation import METHODS, parse_method_options
from veil.study.conditions import JPEG_CONDITIONS, STUDY_CONDITIONS
from veil.study.profiles import (
    LOADERS,
    PRECISIONS,
    PROFILE_DEFAULTS,
    PROFILE_RECIPES,
    PROFILES,
    SCHEDULES,
)


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [p.strip() for p in text.split(",") if p.strip()]
    return items or None


def _method_options(pairs: tuple[str, ...], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``-o overlay.color=0,0,0`` -> ``{"overlay": {"color": (0, 0, 0)}}``."""
    grouped: dict[str, list[str]] = {}
    for pair in pairs:
        method, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise VeilError(f"option {pair!r} must look like METHOD.KEY=VALUE,"
                            " e.g. overlay.color=0,0,0")
        if method not in methods:
            raise VeilError(f"option {pair!r} is for {method!r}, which is not in --methods")
        if method in JPEG_CONDITIONS:
            raise VeilError(f"option {pair!r}: {method} reproduces the authors' files"
                            " exactly; it takes no options")
        grouped.setdefault(method, []).append(rest)
    return {m: parse_method_options(m, p) for m, p in grouped.items()}


def _lr_table(pairs: tuple[str, ...]) -> dict[str, float]:
    """``("alexnet=0.02", "vgg16=0.005,vgg19=0.005")`` -> ``{"alexnet": 0.02, ...}``."""
    from veil.study.train import list_archs

    table: dict[str, float] = {}
    for text in pairs:
        for pair in filter(None, (p.strip() for p in text.split(","))):
            arch, sep, value = pair.partition("=")
            try:
                lr = float(value)
            except ValueError:
                lr = float("nan")
            if not sep or not arch.strip() or not lr > 0:
                raise VeilError(f"--lr-for {pair!r} must look like ARCH=LR with LR > 0,"
                                " e.g. alexnet=0.02")
            if arch.strip() not in list_archs():
                raise VeilError(f"--lr-for {pair!r}: {arch.strip()!r} is not a torchvision"
                                " architecture")
            table[arch.strip()] = lr
    return table


def _profiles_help() -> str:
    quick, paper = PROFILE_RECIPES["quick"], PROFILE_RECIPES["paper"]
    paper_defaults = PROFILE_DEFAULTS["paper"]
    paper_lr = ", ".join(f"{a}" for a, _ in paper.arch_lr[:-1])
    paper_lr += f" and {paper.arch_lr[-1][0]} {paper.arch_lr[-1][1]}"
    return (
        "\b\nProfiles:\n"
        f"  quick  {quick.archs[0]}, {quick.epochs} epochs at {quick.img_size} px, batch "
        f"{quick.batch_size}, one-cycle lr,\n"
        f"         label smoothing {quick.label_smoothing}, bf16, images decoded once into a "
        "uint8 cache;\n"
        "         sized for 2 CPU cores (one seed of original vs blur on Imagenette: 14 min\n"
        "         on 2 cores shared with other jobs, 76% top-1)\n"
        f"  paper  the paper's recipe: {paper.epochs} epochs of SGD (momentum 0.9, wd 1e-4, "
        "batch 256,\n"
        "         lr x batch/256, /10 every 30 epochs), RandomResizedCrop(224) + flip,\n"
        "         Resize(256) + CenterCrop(224), all 15 of the paper's architectures;\n"
        f"         lr {paper.lr}, but {paper_lr};\n"
        f"         seeds {','.join(map(str, paper_defaults.seeds))}, methods"
        f" {','.join(paper_defaults.methods)}\n\n"
        "\b\nSeveral GPUs or machines (--batch-size is then the global batch):\n"
        "  torchrun --nproc-per-node N -m veil study ..."
    )


@click.command("study", epilog=_profiles_help())
@click.option("--data", "data_path", required=True, type=click.Path(exists=True),
              help="A labelled dataset with train/ and val/ splits (ImageFolder / ILSVRC), or"
                   " a Hugging Face dataset with train and validation splits and a ClassLabel"
                   " column (Parquet shards, or a save_to_disk folder).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
              help="How --data is organised.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Labels for a flat val/ folder (ILSVRC's LOC_val_solution.csv).")
@click.option("--image-column", default=None, metavar="NAME",
              help="Hugging Face dataset: the column holding the images (default: its Image "
                   "feature).")
@click.option("--label-column", default=None, metavar="NAME",
              help="Hugging Face dataset: the column holding the labels (default: its "
                   "ClassLabel column).")
@click.option("--faces", "faces_source", required=True, metavar="STORE_OR_FILE",
              help="Where the boxes come from: a face store or a faces file (paper JSON, COCO, "
                   "Parquet), with keys relative to --data.")
@click.option("--methods", default=None, metavar="M1,M2",
              help=f"Obfuscation methods to compare with the original ({', '.join(METHODS)}),"
                   " or the authors' JPEG conditions: blur_q75 (their blurred files: blur, then"
                   " every image re-saved as Pillow's default JPEG, quality 75) and"
                   " recompress_q75 (the control: original pixels through the same save)."
                   " Default: the profile's (quick: blur; paper: blur,overlay).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="METHOD.KEY=VALUE",
              help="A method option, e.g. -o overlay.color=0,0,0 (repeatable).")
@click.option("--archs", default=None, metavar="A1,A2",
              help="torchvision architectures by name (default: the profile's).")
@click.option("--seeds", default=None, metavar="N|S1,S2",
              help="How many seeds (0..N-1), or a list of seeds. Default: the profile's"
                   " (quick: 0; paper: 1,2,3).")
@click.option("--profile", type=click.Choice(PROFILES), default="quick", show_default=True,
              help="The training recipe (see Profiles below).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override: epochs.")
@click.option("--img-size", type=click.IntRange(min=8), default=None,
              help="Override: training/evaluation crop size in px (eval resize scales along).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Override: global batch size (lr scales with batch/256).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override: learning rate for a batch of 256.")
@click.option("--lr-for", "lr_for", multiple=True, metavar="ARCH=LR",
              help="Override one architecture's learning rate (for a batch of 256), e.g."
                   " --lr-for alexnet=0.02 (repeatable, or comma-separated). The paper profile"
                   " trains AlexNet and VGG at 0.01, the rest at 0.1; --lr sets every arch.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              help="Override: lr schedule.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Override: fp32, or bf16 autocast.")
@click.option("--loader", type=click.Choice(LOADERS), default=None,
              help="Override: 'cache' decodes every image once into memory; 'stream' decodes "
                   "and transforms each image every epoch (the paper's way).")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="Override: torch.compile the model.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N images of each split (spread over the classes).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding processes (default: one per core).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads per process (default: the cores, shared by local ranks).")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="CPU only: train this many models at once, each on its share of the cores "
                   "(default: one per core, up to the trainings left).")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--keep-cache", is_flag=True,
              help="Keep OUT/cache (decoded images) when the study is done.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="The run folder (resumed when it exists); required unless --plan.")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the matrix (arch x seed x condition) with each recipe, the faces"
                   " matched per split, the disk the caches need and the time expected on"
                   " this machine (a few training steps of each arch, measured), then exit"
                   " without training.")
@progress_option
@fail_cleanly
def study_command(data_path: str, layout: str, labels_file: str | None,
                  image_column: str | None, label_column: str | None, faces_source: str,
                  methods: str, option_pairs: tuple[str, ...], archs: str | None, seeds: str,
                  profile: str, epochs: int | None, img_size: int | None,
                  batch_size: int | None, lr: float | None, lr_for: tuple[str, ...],
                  schedule: str | None,
                  precision: str | None, loader: str | None, compile_model: bool | None,
                  limit: int | None, workers: int | None, threads: int | None,
                  parallel: int | None, device: str,
                  keep_cache: bool, out: str | None, plan_only: bool,
                  progress: bool | None) -> None:
    """Train and evaluate models on original and face-obfuscated images.

    Per architecture and seed: train on the original images and evaluate on them; per
    method, train on obfuscated images and evaluate on obfuscated and on original ones.
    Predictions (Parquet), checkpoints, config and timings go to OUT; run the same
    command again to resume an interrupted study. Then: veil analyze OUT.
    """
    from veil.study.run import StudyConfig, plan_study, run_study, seeds_from

    if out is None and not plan_only:
        raise click.UsageError("--out is required (unless --plan)")
    method_list = (_split_list(methods) if methods is not None
                   else list(PROFILE_DEFAULTS[profile].methods)) or []
    for method in method_list:
        if method not in STUDY_CONDITIONS:
            raise VeilError(f"unknown method {method!r}; choose from"
                            f" {', '.join(STUDY_CONDITIONS)}")
    overrides: dict[str, Any] = {
        "epochs": epochs, "img_size": img_size, "batch_size": batch_size, "lr": lr,
        "schedule": schedule, "precision": precision, "loader": loader,
        "compile": compile_model, "arch_lr": _lr_table(lr_for) or None}
    config = StudyConfig(
        data=data_path, faces=faces_source, out=out or "", methods=method_list,
        method_options=_method_options(option_pairs, method_list),
        archs=_split_list(archs),
        seeds=seeds_from(seeds) if seeds is not None else None, profile=profile,
        overrides=overrides, layout=layout, labels_file=labels_file, limit=limit,
        image_column=image_column, label_column=label_column,
        workers=workers, threads=threads, device=device, keep_cache=keep_cache,
        parallel=parallel, progress=want_progress(progress),
        log=lambda m: click.echo(m, err=True),
    )
    if plan_only:
        from veil.study.plan import print_plan

        plan = plan_study(config)
        if os.environ.get("RANK", "0") == "0":
            print_plan(plan, click.echo)
        return
    summary = run_study(config)
    if os.environ.get("RANK", "0") == "0" and summary.done:
        click.echo(f"study done in {summary.seconds:.1f} s: {summary.out}")
        for c in summary.conditions:
            top1 = "-" if c.top1 is None else f"{c.top1:.4f}"
            top5 = "-" if c.top5 is None else f"{c.top5:.4f}"
            click.echo(f"  {c.arch:<20} seed{c.seed}  train-{c.train:<10} eval-{c.eval:<10}"
                       f"  top-1 {top1}  top-5 {top5}")
