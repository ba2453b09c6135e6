"""Studies: conditions x repeats of runs (spec), where they run (executors), and their plan (runner)."""

from ouroboros.study.spec import Condition, Limits, Resources, RunSpec, Study, load_study

__all__ = ["Condition", "Limits", "Resources", "RunSpec", "Study", "load_study"]
