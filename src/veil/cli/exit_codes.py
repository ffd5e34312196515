"""veil's exit codes: one table for every verb, so a release gate can tell a typo from a leak.

The CLI's entry point (:mod:`veil.cli`) is the one place that turns exceptions into these
codes; verbs only ``sys.exit`` with :data:`FINDINGS` or :data:`INTERRUPTED` from a run's
summary, and raise ``click.UsageError`` / ``click.ClickException`` / ``veil.errors.VeilError``
for everything the user has to fix before a run can start.
"""

from __future__ import annotations

OK = 0
#: ``veil audit`` found something (changed bytes, an under-obfuscated face region, a
#: residual face, identifying metadata) or could not verify everything (no --source for
#: the face regions, no ledger), or some inputs failed (unreadable images, a failed
#: shard); the rest of the run completed.
FINDINGS = 1
#: A usage or configuration error: an unknown flag, a bad option value, a missing input
#: path, an unreachable store. Nothing was run.
USAGE = 2
#: Interrupted (Ctrl-C); run the same command again to resume.
INTERRUPTED = 130

#: The table, as ``veil --help`` and the README print it.
TABLE = """\
  0    ok: the run completed (audit: clean, every check ran)
  1    findings or failed inputs: audit found changed bytes, a face region not
       hidden, a face or identifying metadata, or could not verify everything,
       or some images/shards failed (the rest completed)
  2    usage or configuration error: unknown flag, bad value, missing input,
       unreachable store; nothing was run
  130  interrupted (Ctrl-C): run the same command again to resume"""
