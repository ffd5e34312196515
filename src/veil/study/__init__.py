"""The study: train and evaluate models on original vs. face-obfuscated images.

``run_study(StudyConfig(...))`` is ``veil study`` as a function; the run folder it
writes is what ``veil analyze`` and ``veil report`` read.
"""

from veil.study.profiles import PROFILE_RECIPES, Recipe, resolve_recipe

__all__ = ["PROFILE_RECIPES", "Recipe", "StudyConfig", "StudySummary", "resolve_recipe",
           "run_study"]


def __getattr__(name: str) -> object:
    # torch loads only when the run machinery is used, not for the recipes.
    if name in ("StudyConfig", "StudySummary", "run_study"):
        from veil.study import run

        return getattr(run, name)
    raise AttributeError(name)
