"""``veil import-faces`` and ``veil export-faces``: faces files in and out of the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from veil.cli.common import store_failure
from veil.datasets import open_dataset
from veil.errors import VeilError
from veil.interchange import export_faces as export_to_file
from veil.interchange import import_faces as import_from_file
from veil.store import FaceStore
from veil.store.sql import redacted_url

T = TypeVar("T")

_STORE_HELP = "Face store: a SQLite file or a SQLAlchemy URL (postgresql+psycopg://...)."


def dataset_keys(root: Path) -> list[str]:
    """The image keys of a dataset, read by the one reader every stage uses."""
    return open_dataset(root).keys()


@contextmanager
def _user_errors(store_text: str) -> Iterator[None]:
    """Turn expected failures into one-line messages instead of tracebacks."""
    try:
        yield
    except VeilError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise store_failure(exc, store_text) from exc
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}") from exc


def _run(store_url: str, create: bool, work: Callable[[FaceStore], T]) -> T:
    with _user_errors(redacted_url(store_url)):
        store = FaceStore(store_url, create=create)
        try:
            return work(store)
        finally:
            store.close()


@click.command("import-faces")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", "store_url", required=True, envvar="VEIL_STORE", show_envvar=True,
              help=_STORE_HELP)
@click.option(
    "--format", "fmt", type=click.Choice(["auto", "paper", "coco", "parquet"]), default="auto",
    show_default=True,
    help="Format of FILE: the paper's JSON (face_annotations_ILSVRC.json), COCO JSON or "
    "Parquet; auto tells them apart by content.",
)
@click.option(
    "--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Dataset root: match FILE's keys to its images (a flat val/<file> also matches "
    "val/<wnid>/<file>); keys not found are reported and skipped. Without it, keys are "
    "matched against the images already in the store, if any.",
)
@click.option(
    "--annotator", metavar="NAME",
    help="Name recorded on the imported reviews.  [default: import:<file name>]",
)
@click.option(
    "--as-detections", is_flag=True,
    help="Import as a detection run (another detector's predictions) instead of as the "
    "human answer.",
)
def import_faces(
    file: Path, store_url: str, fmt: str, dataset: Path | None, annotator: str | None,
    as_detections: bool,
) -> None:
    """Import face boxes from FILE into the face store, as one import run.

    By default every image in FILE becomes a review: imported annotations are the
    human answer and take precedence over detections.
    """
    if as_detections and annotator:
        raise click.UsageError("--annotator names reviewers; it does not apply to --as-detections")
    if annotator is not None:
        from veil.store.review import check_name

        try:  # the one rule for people's names, as `veil review add-annotator` applies it
            check_name(annotator)
        except VeilError as exc:
            raise click.BadParameter(str(exc), param_hint="--annotator") from exc

    def work(store: FaceStore) -> list[str]:
        known = None
        if dataset is not None:
            known = dataset_keys(dataset)
            if not known:
                raise click.ClickException(f"{dataset}: no images found")
        elif store.count_images():
            known = store.keys()
        report = import_from_file(
            store, file, fmt=fmt, annotator=annotator, as_detections=as_detections,
            known_keys=known,
        )
        return report.lines()

    lines = _run(store_url, True, work)
    click.echo(lines[0])
    for line in lines[1:]:
        click.echo(line, err=True)


@click.command("export-faces")
@click.option("--store", "store_url", required=True, envvar="VEIL_STORE", show_envvar=True,
              help=_STORE_HELP)
@click.option(
    "--format", "fmt", type=click.Choice(["paper", "coco", "parquet"]), required=True,
    help="paper: the released face_annotations_ILSVRC.json layout; coco: COCO JSON with one "
    "face category; parquet: one row per image with sizes, labels, scores and sources.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
    help="File to write (replaced atomically).",
)
@click.option(
    "--keep-val-folders", is_flag=True,
    help="paper format: keep val/<wnid>/<file> keys instead of the released file's flat "
    "val/<file>.",
)
def export_faces(store_url: str, fmt: str, out: Path, keep_val_folders: bool) -> None:
    """Write the current face boxes of every image with an answer to a file.

    The current boxes of an image are its latest review, otherwise its latest
    detection run; images never processed are left out.
    """

    def work(store: FaceStore) -> int:
        return export_to_file(store, out, fmt, flatten_val=not keep_val_folders)

    count = _run(store_url, False, work)
    click.echo(f"wrote {count:,} images to {out} ({fmt})")
