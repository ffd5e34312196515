"""The ``veil`` command line: one verb per stage.

Verbs are imported only when used, so ``veil --help`` stays fast and a verb's heavy
dependencies (onnxruntime, torch, ray) load only for the verb that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from veil import __version__
from veil.cli import exit_codes
from veil.errors import VeilError

# verb -> "module:attribute", in the order a user meets them
VERBS: dict[str, str] = {
    "demo": "veil.cli.demo:demo_command",
    "detect": "veil.cli.detect:detect_command",
    "review": "veil.cli.review:review",
    "obfuscate": "veil.cli.obfuscate:obfuscate_command",
    "audit": "veil.cli.audit:audit_command",
    "eval-faces": "veil.cli.eval_faces:eval_faces",
    "import-faces": "veil.cli.faces:import_faces",
    "export-faces": "veil.cli.faces:export_faces",
    "study": "veil.cli.study:study_command",
    "transfer": "veil.cli.transfer:transfer_command",
    "analyze": "veil.cli.analyze:analyze_command",
    "report": "veil.cli.report:report_command",
}


class ConfigurationError(click.ClickException):
    """A ClickException that says the command cannot run as given (exit code 2)."""

    exit_code = exit_codes.USAGE


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and the one place where
    errors become exit codes (:mod:`veil.cli.exit_codes`)."""

    def invoke(self, ctx: click.Context) -> Any:
        # Click's own defaults give a ClickException exit 1 (the code audit uses for "not
        # clean") and Ctrl-C "Aborted!" with 1; a release gate must tell them apart.
        try:
            return super().invoke(ctx)
        except click.UsageError:  # BadParameter included: exit code 2 already, with usage
            raise
        except click.ClickException as exc:
            raise ConfigurationError(exc.format_message()) from exc
        except VeilError as exc:  # raised on purpose, before or instead of a run
            raise ConfigurationError(str(exc)) from exc
        except (KeyboardInterrupt, click.Abort):
            click.echo("\ninterrupted: run the same command again to resume", err=True)
            raise click.exceptions.Exit(exit_codes.INTERRUPTED) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = VERBS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # One-line summaries without importing every verb's dependencies twice.
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=70)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


EPILOG = "\b\nExit codes (every verb):\n" + exit_codes.TABLE


@click.group(cls=LazyGroup, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="veil")
def main() -> None:
    """veil: find, review, obfuscate and audit the faces in an image dataset,
    and measure what obfuscation costs the models trained on it.

    \b
    A typical run:
      veil detect DATASET --store faces.sqlite
      veil obfuscate DATASET --faces faces.sqlite --method blur --out DATASET-blurred
      veil export-faces --store faces.sqlite --format paper --out faces.json
    """
