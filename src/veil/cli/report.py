"""``veil report``: a study run as one self-contained HTML page."""

from __future__ import annotations

import click

from veil.cli.common import fail_cleanly


@click.command("report", short_help="One self-contained HTML page of a study run's results.")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Where to write the page (default: RUN/report.html).")
@click.option("--examples", type=click.IntRange(min=0), default=4, show_default=True,
              help="Validation images with faces to show before and after obfuscation.")
@click.option("--faces", default=None, metavar="STORE_OR_FILE",
              help="The faces the study used, when study.json's record cannot be opened "
                   "(a moved file, a store URL without its password).")
@fail_cleanly
def report_command(run_dir: str, out: str | None, examples: int, faces: str | None) -> None:
    """Write the study report of RUN: plain-language findings with confidence intervals,
    the tables, plots, Grad-CAM grids and example images, all inline. Runs
    `veil analyze RUN` first when RUN/analysis/ is missing.
    """
    from veil.report.study import build_report

    path = build_report(run_dir, out, examples=examples, faces=faces)
    click.echo(f"report: {path}")
