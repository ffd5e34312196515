"""The study's report (``veil report``): one self-contained HTML page per run.

The page machinery every report shares (templates, inline images) is :mod:`veil.html`;
its names are re-exported here for existing imports.
"""

from veil.html import draw_boxes, render, thumbnail_uri

__all__ = ["draw_boxes", "render", "thumbnail_uri"]
