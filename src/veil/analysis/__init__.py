"""Analysis of a study run: the paper's tables and figures with honest statistics.

``analyze(RUN)`` writes RUN/analysis/ (see :mod:`veil.analysis.pipeline`);
``paper_tables(DIR)`` rebuilds Table 3 / Table B from the authors' evaluation pickles.
The statistics live in :mod:`veil.analysis.stats`.
"""

from veil.analysis.paper_pickles import paper_tables
from veil.analysis.pipeline import ANALYSIS_DIR, SUMMARY, Analysis, AnalyzeOptions, analyze
from veil.analysis.run import StudyRun, TrainEval, load_run

__all__ = [
    "ANALYSIS_DIR",
    "SUMMARY",
    "Analysis",
    "AnalyzeOptions",
    "StudyRun",
    "TrainEval",
    "analyze",
    "load_run",
    "paper_tables",
]
