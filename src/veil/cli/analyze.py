"""``veil analyze``: the paper's tables and plots from a study run, with statistics."""

from __future__ import annotations

from pathlib import Path

import click

from veil.cli.common import fail_cleanly


@click.command("analyze", short_help="Tables, statistics and plots of a study run (or of the "
                                     "paper's pickles).")
@click.argument("run_dir", metavar="RUN", required=False,
                type=click.Path(exists=True, file_okay=False))
@click.option("--paper-pickles", "pickles_dir", default=None, metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="Instead of a run: print the paper's Table 3 / Table B / Table 4 from the "
                   "authors' eval_*_val_results.pickle files in DIR, each with veil's "
                   "seeds-and-images intervals.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Where to write (default: RUN/analysis). With --paper-pickles: also "
                   "write the tables to DIR/paper_tables.txt.")
@click.option("--bootstrap", "resamples", type=click.IntRange(min=100), default=2000,
              show_default=True, help="Bootstrap resamples for the image part of a transfer "
                                       "mAP interval (accuracy intervals need none).")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True,
              help="Seed of that bootstrap, so the mAP intervals are reproducible.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many most / least affected categories to list.")
@click.option("--swing", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Look-alike pairs: the top-1 swing (points, each class, opposite signs).")
@click.option("--ap-tolerance", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Look-alike pairs: the most either class's AP may move (points).")
@click.option("--gradcam/--no-gradcam", default=True, show_default=True,
              help="Grad-CAM grids of the original and obfuscated models (needs model.pt).")
@click.option("--gradcam-images", type=click.IntRange(min=1), default=6, show_default=True,
              help="Validation images with faces in each Grad-CAM grid.")
@click.option("--faces", default=None, metavar="STORE_OR_FILE",
              help="The faces the study used (for Grad-CAM images), when study.json's record "
                   "cannot be opened (a moved file, a store URL without its password).")
@click.option("--transfer", "transfer_dirs", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False),
              help="A `veil transfer` output to add to the transfer table (repeatable); those "
                   "in RUN/transfer/ are always included.")
@click.option("--sem-ddof", type=click.IntRange(min=0), default=2, show_default=True,
              help="--paper-pickles only: ddof of the SEM. 2 reproduces the authors' "
                   "scripts (and the paper's numbers); 1 is the textbook SEM.")
@fail_cleanly
def analyze_command(run_dir: str | None, pickles_dir: str | None, out_dir: str | None,
                    resamples: int, bootstrap_seed: int, top_k: int, swing: float,
                    ap_tolerance: float, gradcam: bool, gradcam_images: int,
                    faces: str | None, transfer_dirs: tuple[str, ...], sem_ddof: int) -> None:
    """Analyse a study RUN folder: overall accuracy per arch and method with SEM over
    seeds, a 95% CI of each drop over seeds and images, read with Holm across archs, and
    McNemar's test (the paper's Table 3 / Table B),
    per-category top-1/top-5/AP with look-alike pairs (Table 4), face statistics (Fig. 2,
    Table 2), the drop-vs-faces correlation, Grad-CAM grids and, when `veil transfer`
    ran on the run's backbones, the transfer table, into RUN/analysis/.

    \b
    veil analyze runs/imagenette
    veil analyze --paper-pickles eval_pickles/
    """
    if pickles_dir is not None:
        if run_dir is not None:
            raise click.UsageError("give either RUN or --paper-pickles DIR, not both")
        from veil.analysis.paper_pickles import paper_tables

        text = paper_tables(pickles_dir, sem_ddof=sem_ddof)
        click.echo(text, nl=False)
        if out_dir is not None:
            from veil.analysis.tables import write_text

            path = write_text(Path(out_dir) / "paper_tables.txt", text)
            click.echo(f"written: {path}")
        return
    if run_dir is None:
        raise click.UsageError("give a study RUN folder (or --paper-pickles DIR)")
    try:
        import pandas  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"veil analyze needs pandas and scipy: pip install "
                                   f"'veil[study]' ({exc})") from exc
    from veil.analysis import AnalyzeOptions, analyze

    options = AnalyzeOptions(resamples=resamples, bootstrap_seed=bootstrap_seed, top_k=top_k,
                             swing=swing, ap_tolerance=ap_tolerance, gradcam=gradcam,
                             gradcam_images=gradcam_images, faces=faces,
                             transfer=list(transfer_dirs) or None)
    result = analyze(run_dir, out_dir, options)
    from veil.analysis.pipeline import face_matching_lines

    for line in face_matching_lines(result.summary["study"].get("face_matching")):
        click.echo(line)
    for sentence in result.summary["sentences"]:
        click.echo(sentence["text"])
    for note in result.summary["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(f"analysis: {len(result.files)} files in {result.out_dir}")
