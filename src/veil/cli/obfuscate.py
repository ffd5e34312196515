"""``veil obfuscate``: write a face-obfuscated mirror of a dataset."""

from __future__ import annotations

import sys
from typing import Any

import click

from veil.cli.common import (
    dataset_options,
    echo_summary,
    exit_code,
    fail_cleanly,
    progress_option,
    sharded_run_options,
    want_progress,
)
from veil.faces import load_faces, match_faces
from veil.obfuscation import METHODS, parse_method_options
from veil.stages.obfuscate import FORMATS, OUT_FORMATS, UNANNOTATED_POLICIES, obfuscate_dataset

JPEG_COUNTS = {"keep": ("jpeg-domain", "re-encoded whole")}
"""Summary lines of --format keep: obfuscated JPEGs changed in the JPEG domain, and those
re-encoded whole instead (the ledger says why for each)."""


def _methods_help() -> str:
    return "\n\n".join("\b\n" + spec.describe() for spec in METHODS.values())


METHODS_EPILOG = "\b\nMethods (options are given with -o KEY=VALUE):\n\n" + _methods_help()


@click.command("obfuscate", epilog=METHODS_EPILOG)
@dataset_options
@click.option("--faces", "faces_source", required=True, metavar="STORE_OR_FILE",
              help="Where the boxes come from: a face store (SQLite file or SQLAlchemy URL) or a "
                   "faces file (the paper's JSON, COCO JSON or Parquet).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: the dataset's layout, mirrored (a Hugging Face dataset: the "
                   "same shards, rows, columns and features; loadable with `datasets`).")
@click.option("--out-format", type=click.Choice(OUT_FORMATS), default="auto", show_default=True,
              help="files: one file per image under OUT; webdataset: each input tar shard "
                   "mirrored into OUT (images obfuscated, other members copied byte for byte, "
                   "the boxes in each sample's json under 'faces'; one tar is one shard of the "
                   "run); huggingface: each Parquet or Arrow shard of a Hugging Face dataset "
                   "mirrored into OUT (rows, columns and features as they are, image cells "
                   "obfuscated; a row not written, e.g. failed, gets a null image; one file is "
                   "one shard of the run). auto: the input's own layout for those two, else "
                   "files.")
@click.option("--method", type=click.Choice(list(METHODS)), default="blur", show_default=True,
              help="How faces are obfuscated (see Methods below).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A method option, e.g. -o color=0,0,0 -o shape=ellipse (repeatable).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="keep", show_default=True,
              help="keep: faceless images copied byte for byte; obfuscated JPEGs changed in the "
                   "JPEG domain: only the 8x8-block groups (MCUs) the faces touch are re-encoded, "
                   "with the source's tables, every other block keeps the source's coefficients "
                   "(needs libjpeg-turbo's libturbojpeg; files it cannot handle, e.g. CMYK or "
                   "arithmetic coding, are re-encoded whole, with the reason in the ledger and a "
                   "count in the summary); other formats stay lossless. png: every image as a "
                   "lossless PNG. jpeg: every image as JPEG, obfuscated ones re-encoded whole "
                   "(a second lossy generation of every block).")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="Quality for images that become JPEG without JPEG tables of their own.")
@click.option("--link", is_flag=True,
              help="Hard-link faceless images instead of copying them (same filesystem only).")
@click.option("--keep-metadata", is_flag=True,
              help="Keep identifying metadata (EXIF, GPS, thumbnails, XMP) in copied faceless "
                   "images. By default it is removed losslessly; obfuscated images never keep it.")
@click.option("--unannotated", type=click.Choice(UNANNOTATED_POLICIES), default="error",
              show_default=True,
              help="Images the faces source knows nothing about: count them as errors, copy them "
                   "unchanged, or leave them out.")
@click.option("--ledger", "ledger", type=click.Path(dir_okay=False), default=None,
              help="Where the run is recorded (for resuming and for `veil audit`). Default: "
                   "OUT.veil-ledger.sqlite beside OUT, never inside it: the ledger names this "
                   "machine and its absolute paths, and OUT is what gets published.")
@sharded_run_options
@click.option("--overwrite", is_flag=True,
              help="Delete OUT (and its ledger) first if it holds output made with other "
                   "settings.")
@progress_option
@fail_cleanly
def obfuscate_command(dataset: Any, faces_source: str, out: str, method: str,
                      option_pairs: tuple[str, ...], fmt: str, jpeg_quality: int, link: bool,
                      keep_metadata: bool, unannotated: str, workers: int | None,
                      shard_size: int, max_pixels: int | None, overwrite: bool,
                      progress: bool | None, out_format: str = "auto",
                      backend: Any = None, ledger: str | None = None) -> None:
    """Write DATASET with every face obfuscated into OUT.

    Writes are atomic and the run is resumable: kill it, run the same command again,
    and OUT ends up byte-identical to an uninterrupted run. The exit code is 1 when any
    input failed.
    """
    options = parse_method_options(method, list(option_pairs))
    matching = match_faces(load_faces(faces_source), dataset.keys(), min_share=0.0)
    faces = matching.snapshot
    for warning in faces.warnings[:5]:
        click.echo(f"warning: {warning}", err=True)
    if len(faces.warnings) > 5:
        click.echo(f"warning: ... and {len(faces.warnings) - 5} more", err=True)
    unknown = matching.unmatched
    if unknown:
        click.echo(f"warning: {len(unknown)} key(s) in the faces source are not images of the "
                   f"dataset, e.g. {', '.join(unknown[:3])}", err=True)
    if fmt == "keep":
        from veil.jpeg_domain import available

        missing = available()
        if missing is not None:
            click.echo(f"warning: JPEG-domain output unavailable: {missing}; obfuscated JPEGs "
                       "are re-encoded whole (counted as 're-encoded whole')", err=True)
    summary = obfuscate_dataset(
        dataset, faces, out, method=method, options=options, fmt=fmt,
        jpeg_quality=jpeg_quality, link=link, strip_metadata=not keep_metadata,
        unannotated=unannotated, workers=workers, shard_size=shard_size,
        max_pixels=max_pixels, overwrite=overwrite, progress=want_progress(progress),
        out_format=out_format, backend=backend, ledger=ledger,
    )
    echo_summary(f"obfuscate ({method}) -> {out}", summary,
                 order=("faces", "obfuscated", *JPEG_COUNTS.get(fmt, ()), "copied", "errors"))
    sys.exit(exit_code(summary))
