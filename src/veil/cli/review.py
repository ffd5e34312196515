"""``veil review``: check every image's face boxes in the browser, alone or as a team."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from veil.cli.common import dataset_options, fail_cleanly, store_failure, store_option
from veil.errors import VeilError

T = TypeVar("T")

_POLICY_NOTE = "Stored in the face store: later commands use it until changed."


class ReviewGroup(click.Group):
    """A group whose arguments, unless they start with a subcommand, go to ``serve``.

    ``veil review DATASET ...`` is ``veil review serve DATASET ...``; a dataset folder
    named like a subcommand needs the explicit ``serve``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        help_flags = set(ctx.help_option_names) | {"--help"}
        if args and args[0] not in self.commands and args[0] not in help_flags:
            args = ["serve", *args]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return ["DATASET [SERVE OPTIONS] | COMMAND [ARGS]..."]


@click.group(cls=ReviewGroup)
def review() -> None:
    """Check the face boxes of a dataset in the browser, alone or as a team.

    \b
    veil review DATASET --store faces.sqlite       serve the review (same as `serve`)
    veil review add-annotator NAME --store ...     a personal link for a team member
    veil review gold add KEYS... --store ...       make reviewed images gold-standard
    veil review stats --store ...                  progress, throughput, gold, agreement
    veil review reinstate --batch N --store ...    put back a failed batch's answers
    veil review export --store ... --format paper --out faces.json

    \b
    A team on a server, in five commands:
      veil detect DATASET --store faces.sqlite
      veil review add-annotator alice --store faces.sqlite --url http://HOST:8000
      veil review DATASET --store faces.sqlite --host 0.0.0.0 -k 2 --aggregate union
      veil review stats --store faces.sqlite
      veil review export --store faces.sqlite --format paper --out faces.json
    """


@contextmanager
def _opened(store_url: str, *, create: bool) -> Iterator[Any]:
    from veil.store import FaceStore
    from veil.store.review import ReviewLedger

    try:
        store = FaceStore(store_url, create=create)
    except VeilError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield ReviewLedger(store)
    except SQLAlchemyError as exc:
        raise store_failure(exc, store.display_url) from exc
    finally:
        store.close()


def _with_ledger(store_url: str, work: Callable[[Any], T], *, create: bool = False) -> T:
    with _opened(store_url, create=create) as ledger:
        return work(ledger)


# -- serve -------------------------------------------------------------------------------------


@review.command("serve")
@dataset_options
@store_option()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs annotators with tokens "
                   "(add-annotator); the server refuses to start otherwise.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--annotator", metavar="NAME",
              help="Your name on reviews made without a token on loopback "
                   "[default: your login name].")
@click.option("--require-tokens", is_flag=True,
              help="Ask for a token even on loopback (no anonymous local reviewer).")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (PEM; with --ssl-keyfile). Beyond "
                   "loopback, use TLS here or in a reverse proxy: tokens travel in headers.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False),
              help="The private key of --ssl-certfile (PEM).")
@click.option("--follow-links", is_flag=True,
              help="Serve image files that are symbolic links leading out of the dataset "
                   "folder (refused by default).")
@click.option("--max-body", type=click.IntRange(min=1024), default=None, metavar="BYTES",
              help="Largest request body accepted; bigger ones are refused before they are "
                   "read  [default: 1 MiB].")
@click.option("-k", "--reviews-per-image", type=click.IntRange(min=1), default=None,
              help=f"Independent reviews each image needs [default: 1]. {_POLICY_NOTE}")
@click.option("--aggregate", type=click.Choice(["union", "majority"]), default=None,
              help="How k answers combine: union keeps every face anyone marked (privacy "
                   "prefers over-coverage), majority those at least half marked "
                   "[default: union].")
@click.option("--gold-rate", type=click.FloatRange(0, 1), default=None,
              help="Share of served items that are gold-standard images [default: 0.1].")
@click.option("--gold-wrong", type=click.FloatRange(0, 1), default=None,
              help="Share of gold items shown with deliberately wrong boxes [default: 0.5].")
@click.option("--gold-iou", type=click.FloatRange(0, 1), default=None,
              help="Pass mark for gold answers: pixel IoU of the union masks "
                   "[default: 0.72, the paper's].")
@click.option("--lives", type=click.IntRange(min=1), default=None,
              help="Failed gold answers allowed per batch; at zero the batch restarts "
                   "[default: 2, the paper's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Answers per batch, the unit lives are counted in [default: 20].")
@click.option("--uncertain-below", type=click.FloatRange(0, 1), default=None,
              help="Detections scoring below this count as uncertain and come first "
                   "[default: 0.5].")
@click.option("--lease-minutes", type=click.FloatRange(min=0), default=None,
              help="An image handed out stays with its annotator this long (unless saved), "
                   "so a team splits the work; 0 turns leasing off [default: 10].")
@fail_cleanly
def serve_command(dataset: Any, store_url: str, host: str, port: int, annotator: str | None,
                  require_tokens: bool, ssl_certfile: str | None, ssl_keyfile: str | None,
                  follow_links: bool, max_body: int | None, **policy: Any) -> None:
    """Serve the review of DATASET's faces at http://HOST:PORT/.

    Images come in priority order (uncertain or many detections first); the page
    draws, moves, resizes and deletes boxes, and every save is a new review row.
    """
    from veil.review.guard import MAX_BODY_BYTES
    from veil.review.server import serve
    from veil.review.settings import ReviewSettings

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together")
    given = {name: value for name, value in policy.items() if value is not None}
    with _opened(store_url, create=True) as ledger:
        resolved = ReviewSettings.resolve(ledger, given)
        serve(dataset, ledger.store, resolved, host=host, port=port, annotator=annotator,
              require_tokens=require_tokens, remember=given, follow_links=follow_links,
              max_body=max_body or MAX_BODY_BYTES, ssl_certfile=ssl_certfile,
              ssl_keyfile=ssl_keyfile)


# -- annotators --------------------------------------------------------------------------------


@review.command("add-annotator")
@click.argument("name")
@store_option()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True,
              help="Where the team will open the review (goes into the link).")
@click.option("--rotate", is_flag=True,
              help="NAME exists: give them a new link; the old one stops working.")
@fail_cleanly
def add_annotator(name: str, store_url: str, url: str, rotate: bool) -> None:
    """Create annotator NAME and print their personal link.

    The token rides in the link's #fragment, which browsers never send to a server;
    the page keeps it for the tab and sends it in a header. Only its hash is stored,
    so the link is shown this once.
    """
    token = _with_ledger(store_url, lambda ledger: ledger.add_annotator(name, rotate=rotate))
    click.echo(f"{name}: {url.rstrip('/')}/#token={token}")


@review.command("remove-annotator")
@click.argument("name")
@store_option()
@fail_cleanly
def remove_annotator(name: str, store_url: str) -> None:
    """Revoke NAME's link (their reviews stay)."""
    if not _with_ledger(store_url, lambda ledger: ledger.remove_annotator(name)):
        raise click.ClickException(f"no annotator {name!r}")
    click.echo(f"revoked {name}'s link")


# -- gold --------------------------------------------------------------------------------------


@review.group("gold")
def gold() -> None:
    """Gold-standard images: known answers mixed into the work to check reviewers.

    Mark images whose answer you trust (reviewed by you, or imported from a trusted
    faces file); their answer is copied as the truth.
    """


@gold.command("add")
@click.argument("keys", nargs=-1)
@store_option()
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A faces file (paper JSON, COCO, Parquet) with trusted boxes: each of its "
                   "images in the store becomes gold with those boxes.")
@click.option("--format", "fmt", type=click.Choice(["auto", "paper", "coco", "parquet"]),
              default="auto", show_default=True, help="Format of --from.")
@fail_cleanly
def gold_add(keys: tuple[str, ...], store_url: str, from_file: Path | None, fmt: str) -> None:
    """Make KEYS (reviewed images) gold, with their current answer as the truth."""
    if bool(keys) == bool(from_file):
        raise click.UsageError("give image KEYS or --from FILE (one of them)")

    def work(ledger: Any) -> tuple[int, list[str]]:
        store = ledger.store
        if from_file is not None:
            from veil.interchange import KeyResolver, read_faces

            faces = read_faces(from_file, fmt)
            resolve = KeyResolver(store.keys())
            items, skipped = {}, []
            for key, boxes in faces.items():
                target = resolve(key)
                if target is None:
                    skipped.append(key)
                else:
                    items[target] = boxes
            if not items:
                raise VeilError(f"none of the keys in {from_file.name} are in the store")
            return ledger.set_gold(items, source=f"file:{from_file.name}"), skipped
        unknown = [k for k in keys if store.image(k) is None]
        if unknown:
            raise VeilError(f"not in the store: {', '.join(unknown[:5])}")
        unreviewed = [k for k in keys if not store.reviews(k)]
        if unreviewed:
            raise VeilError(
                f"never reviewed, so there is no trusted answer yet: {', '.join(unreviewed[:5])}"
                " (review them first, or use --from with a file of trusted boxes)"
            )
        current = store.current_boxes(keys)
        return ledger.set_gold({k: current.get(k, []) for k in keys}, source="review"), []

    count, skipped = _with_ledger(store_url, work)
    click.echo(f"{count} gold image(s) set")
    if skipped:
        click.echo(f"{len(skipped)} key(s) not in the store were skipped, e.g. "
                   f"{', '.join(skipped[:5])}", err=True)


@gold.command("remove")
@click.argument("keys", nargs=-1, required=True)
@store_option()
@fail_cleanly
def gold_remove(keys: tuple[str, ...], store_url: str) -> None:
    """Stop using KEYS as gold (past attempts keep their grades)."""
    count = _with_ledger(store_url, lambda ledger: ledger.remove_gold(keys))
    click.echo(f"{count} gold image(s) removed")


@gold.command("list")
@store_option()
@fail_cleanly
def gold_list(store_url: str) -> None:
    """Gold images with their number of faces and where the truth came from."""
    for item in _with_ledger(store_url, lambda ledger: ledger.gold_items()):
        click.echo(f"{item.key}\t{len(item.boxes)} face(s)\t{item.source or ''}")


# -- results -----------------------------------------------------------------------------------


@review.command("stats")
@store_option()
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@fail_cleanly
def stats_command(store_url: str, as_json: bool) -> None:
    """Progress, throughput and gold accuracy per annotator, and agreement."""
    from veil.review.settings import ReviewSettings
    from veil.review.stats import format_stats, team_stats

    def work(ledger: Any) -> dict[str, Any]:
        return team_stats(ledger, ReviewSettings.load(ledger))

    stats = _with_ledger(store_url, work)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        for line in format_stats(stats):
            click.echo(line)


@review.command("reinstate")
@store_option()
@click.option("--batch", "batch_id", type=int, required=True,
              help="The failed batch whose answers to put back (see `veil review stats`).")
@fail_cleanly
def reinstate_command(store_url: str, batch_id: int) -> None:
    """Put back the answers a failed batch set aside, after inspecting them.

    Each image's last answer from the batch is appended again as a new review (nothing
    is overwritten); an image answered again since the failure keeps that answer.
    """
    from functools import partial

    from veil.review.service import consensus
    from veil.review.settings import ReviewSettings

    def work(ledger: Any) -> Any:
        settings = ReviewSettings.load(ledger)
        independent = settings.reviews_per_image > 1
        return ledger.reinstate_batch(
            batch_id, per_annotator=independent,
            follow_up=partial(consensus, settings) if independent else None)

    done = _with_ledger(store_url, work)
    click.echo(f"batch {done.batch}: {len(done.keys)} answer(s) reinstated")
    if done.skipped:
        click.echo(f"{len(done.skipped)} image(s) answered again since the failure kept "
                   f"that answer, e.g. {', '.join(done.skipped[:5])}")


@review.command("export")
@store_option()
@click.option("--format", "fmt", type=click.Choice(["paper", "coco", "parquet"]), required=True,
              help="paper: face_annotations_ILSVRC.json layout; coco: COCO JSON; parquet.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              required=True, help="File to write (replaced atomically).")
@click.option("--aggregate", type=click.Choice(["union", "majority"]), default=None,
              help="How several reviewers' answers combine [default: the stored policy].")
@click.option("--min-reviews", type=click.IntRange(min=1), default=1, show_default=True,
              help="Only images with at least this many reviewers.")
@click.option("--include-unreviewed", is_flag=True,
              help="Also write every other image's current boxes (detections or imports).")
@click.option("--keep-val-folders", is_flag=True,
              help="paper format: keep val/<wnid>/<file> keys instead of flat val/<file>.")
@fail_cleanly
def export_command(store_url: str, fmt: str, out: Path, aggregate: str | None,
                   min_reviews: int, include_unreviewed: bool, keep_val_folders: bool) -> None:
    """Write the reviewed boxes: each image's reviewers' answers aggregated, gold truths."""
    from veil.review.export import export_reviewed
    from veil.review.settings import ReviewSettings

    def work(ledger: Any) -> int:
        settings = ReviewSettings.load(ledger, {"aggregate": aggregate})
        return export_reviewed(ledger, settings, out, fmt, min_reviews=min_reviews,
                               include_unreviewed=include_unreviewed,
                               flatten_val=not keep_val_folders)

    count = _with_ledger(store_url, work)
    click.echo(f"wrote {count:,} images to {out} ({fmt})")
