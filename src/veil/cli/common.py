"""Options and output shared by the CLI verbs, so every verb reads the same way."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from veil.backends import BACKENDS, get_backend
from veil.cli import exit_codes
from veil.datasets import LAYOUTS, open_dataset
from veil.errors import VeilError
from veil.runner import RunSummary

DEFAULT_STORE = "faces.sqlite"


def hf_column_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--image-column, --label-column and --id-column: a Hugging Face dataset's columns."""
    func = click.option(
        "--id-column", default=None, metavar="NAME",
        help="Hugging Face dataset: key each row <split>/<value of this column> (unique in "
             "its split) instead of <split>/<shard file>/<row>.")(func)
    func = click.option(
        "--label-column", default=None, metavar="NAME",
        help="Hugging Face dataset: the column holding labels (default: its ClassLabel "
             "column, or the one named 'label').")(func)
    return click.option(
        "--image-column", default=None, metavar="NAME",
        help="Hugging Face dataset: the column holding the images (default: its Image "
             "feature, or the one named 'image' among several).")(func)


def dataset_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """DATASET plus the flags that say how to read it; passes ``dataset`` to the verb."""

    @click.argument("dataset_path", metavar="DATASET", type=click.Path())
    @click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
                  help="How DATASET is organised: ImageFolder/ILSVRC (split/class/image), a plain "
                       "folder, a text file listing image paths, WebDataset tar shards (a "
                       ".tar, a folder of them, or a pattern such as 'shards-{000000..000009}.tar'"
                       "; keys are <shard>.tar/<member>), or a Hugging Face dataset (a folder "
                       "of Parquet shards as the Hub serves them, data/<split>-NNNNN-of-NNNNN"
                       ".parquet, or a save_to_disk folder; keys are <split>/<shard file>/<row>"
                       ").")
    @click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
                  help="For a file list: the folder its paths are relative to "
                       "(default: the list's folder); for WebDataset shards, the folder "
                       "their keys are relative to.")
    @click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
                  default=None, help="Labels for a flat val/ folder: '<file> <label>' lines or "
                                     "ILSVRC's LOC_val_solution.csv.")
    @hf_column_options
    @click.option("--split", default=None,
                  help="Only this split (top-level folder), e.g. 'val'.")
    @click.option("--limit", type=click.IntRange(min=1), default=None,
                  help="Only the first N images (spread over the classes), for a quick try.")
    @functools.wraps(func)
    def wrapper(dataset_path: str, layout: str, root: str | None, labels_file: str | None,
                split: str | None, limit: int | None, image_column: str | None,
                label_column: str | None, id_column: str | None, **kwargs: Any) -> Any:
        try:
            dataset = open_dataset(dataset_path, layout=layout, root=root,
                                   labels_file=labels_file, image_column=image_column,
                                   label_column=label_column, id_column=id_column)
            if split is not None or limit is not None:
                dataset = dataset.subset(split=split, limit=limit)
        except VeilError as exc:
            raise click.ClickException(str(exc)) from exc
        return func(dataset=dataset, **kwargs)

    return wrapper


def open_source_dataset(path: str) -> Any:
    """A second dataset a verb compares with (``veil audit --source``), its layout found
    as DATASET's is; a missing or unreadable one is a usage error."""
    try:
        return open_dataset(path)
    except VeilError as exc:
        raise click.ClickException(f"--source: {exc}") from exc


def store_option(required: bool = False) -> Callable[..., Any]:
    return click.option(
        "--store", "store_url", default=None if required else DEFAULT_STORE,
        required=required, envvar="VEIL_STORE", show_default=not required, show_envvar=True,
        help="The face store: an SQLite file (created if missing) or an SQLAlchemy URL "
             "such as postgresql+psycopg://user@host/db.")


workers_option = click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="Worker processes (default: one per core this process may use, but obfuscate "
         "starts at most one per 5,000 images, since a small job is done before a pool has "
         "started; with --backend ray, one per CPU of the cluster).")


def backend_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--backend and --address; passes ``backend`` (a backend object) to the verb."""

    @click.option("--backend", "backend_name", type=click.Choice(BACKENDS), default="local",
                  show_default=True,
                  help="Where shards run: local processes, or a Ray cluster (one actor per "
                       "worker; every node must see DATASET and the output at the same paths).")
    @click.option("--address", default=None, metavar="HOST:PORT",
                  help="The Ray cluster to join, e.g. 127.0.0.1:6379 or 'auto' (default: "
                       "RAY_ADDRESS, else a new local Ray instance).")
    @functools.wraps(func)
    def wrapper(backend_name: str, address: str | None, **kwargs: Any) -> Any:
        try:
            backend = get_backend(backend_name, address=address)
        except VeilError as exc:
            raise click.UsageError(str(exc)) from exc
        return func(backend=backend, **kwargs)

    return wrapper
shard_size_option = click.option(
    "--shard-size", type=click.IntRange(min=1), default=256, show_default=True,
    help="Images per shard: the unit of work, progress and resumption.")
max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=None, envvar="VEIL_MAX_PIXELS",
    show_envvar=True,
    help="Refuse images with more pixels than this (decompression bombs); default 200,000,000.")
progress_option = click.option(
    "--progress/--no-progress", default=None,
    help="Show a progress bar (default: when writing to a terminal).")


def sharded_run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--workers, --backend/--address, --shard-size and --max-pixels, in that order: how
    every verb that runs shards (detect, obfuscate, audit) is spread out and guarded."""
    return workers_option(backend_options(shard_size_option(max_pixels_option(func))))


def want_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn veil's own errors into one clear line, never a traceback (exit code 2, set
    where :mod:`veil.cli` turns every ClickException into a usage error)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VeilError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def store_failure(exc: Exception, store_text: str | None = None) -> click.ClickException:
    """A database error as one line naming the store: the driver's own first line (what
    was refused, unreachable or missing), without SQLAlchemy's statement dump."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    where = f"face store {store_text}" if store_text else "face store"
    return click.ClickException(f"{where}: {reason}")


def echo_summary(title: str, summary: RunSummary, *, order: tuple[str, ...] = (),
                 max_errors: int = 10) -> None:
    """The end-of-run report: counts, speed, and the first errors with their messages."""
    click.echo(f"{title}: {summary.images} images in {summary.seconds:.1f} s "
               f"({summary.images_per_second:.1f} img/s)")
    if summary.startup_seconds is not None and summary.images:
        click.echo(f"  start-up {summary.startup_seconds:.1f} s (workers setting up), "
                   f"then {summary.images_per_second_after_startup:.1f} img/s")
    if summary.resumed_shards:
        click.echo(f"  resumed: {summary.resumed_shards} shard(s) were already done")
    names = list(order) + sorted(k for k in summary.counts if k not in order)
    width = max((len(n) for n in names), default=0)
    for name in names:
        click.echo(f"  {name:<{width}}  {summary.counts.get(name, 0):>8}")
    if summary.errors:
        click.echo(f"  {len(summary.errors)} input(s) failed:", err=True)
        for key, message in summary.errors[:max_errors]:
            click.echo(f"    {key}: {message}", err=True)
        if len(summary.errors) > max_errors:
            click.echo(f"    ... and {len(summary.errors) - max_errors} more", err=True)
    for index, message in summary.failed_shards[:max_errors]:
        click.echo(f"  shard {index} failed: {message} (run again to retry it)", err=True)
    if summary.interrupted:
        click.echo("  interrupted: run the same command again to resume", err=True)


def exit_code(summary: RunSummary) -> int:
    """A sharded run's exit code (:mod:`veil.cli.exit_codes`)."""
    if summary.interrupted:
        return exit_codes.INTERRUPTED
    return exit_codes.OK if summary.ok else exit_codes.FINDINGS


def resolve_path(path: str) -> Path:
    return Path(os.path.expanduser(path))


