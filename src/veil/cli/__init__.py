"""The ``veil`` command line: one verb per stage."""

from __future__ import annotations

import click

from veil import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="veil")
def main() -> None:
    """veil: find, review, obfuscate and audit the faces in an image dataset,
    and measure what obfuscation costs the models trained on it."""
