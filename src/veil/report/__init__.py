"""Self-contained HTML reports (every image inline), rendered from Jinja2 templates."""

from veil.report.html import draw_boxes, render, thumbnail_uri

__all__ = ["draw_boxes", "render", "thumbnail_uri"]
