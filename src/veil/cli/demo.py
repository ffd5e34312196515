"""``veil demo``: the pipeline end to end on real photographs, offline."""

from __future__ import annotations

import click

from veil.cli.common import fail_cleanly, progress_option, want_progress, workers_option
from veil.demo import run_demo


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Folder for the demo's images, stores and report.html (replaced each run).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              envvar="VEIL_DATA", show_envvar=True,
              help="An Imagenette-style dataset (train/ and val/ class folders) to run on as well.")
@click.option("--download", is_flag=True,
              help="Download Imagenette (about 330 MB) into the user cache when it is not there.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N val images of the dataset (spread over the classes).")
@click.option("--study/--no-study", default=True, show_default=True,
              help="With Imagenette, also train original and blurred ResNet-18s on a subset "
                   "(a few minutes on 2 cores) and link the study report.")
@workers_option
@progress_option
@fail_cleanly
def demo_command(out: str, data: str | None, download: bool, limit: int | None, study: bool,
                 workers: int | None, progress: bool | None) -> None:
    """Detect and obfuscate the faces in a gallery of real photographs (and Imagenette's val
    split when available), then write an HTML report with before/after images."""
    result = run_demo(out, data=data, download=download, limit=limit, study=study,
                      workers=workers,
                      progress=want_progress(progress), log=lambda m: click.echo(m, err=True))
    for section in result.sections:
        click.echo(f"{section['title']}: {section['images']} images, "
                   f"{section['with_faces']} with faces, {section['faces']} faces")
    if result.study_report is not None:
        click.echo(f"study report: {result.study_report.resolve()}")
    for note in result.skipped:
        click.echo(f"skipped: {note}")
    click.echo(f"report: {result.report.resolve()}")
