"""Human review of the face store in the browser (``veil review``).

A FastAPI app serves a plain-JavaScript page where people check every image's boxes:
draw, move, resize and delete them, with gold-standard images mixed in and graded as
in the paper (pixel IoU of the union masks >= 0.72, two lives per batch). Teams get
personal token links, k independent reviews per image aggregated by union or
majority, a stats page, and conflict-safe saves (every save is a new review row).

Install with ``pip install 'veil[review]'``.
"""

from veil.review.settings import AGGREGATES, ReviewSettings

__all__ = ["AGGREGATES", "ReviewSettings"]
