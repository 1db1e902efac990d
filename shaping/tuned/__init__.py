"""tuned_static: the strongest constant plan per scenario, found by black-box search in the batched simulator.

shaping.tuned.search runs the search (tune_static), shaping.tuned.cache keeps its results (load_or_tune),
shaping.tuned.policy makes them a policy (``make_policy("tuned_static")``); docs/tuned-static.md says how to use it.
"""

from shaping.tuned.cache import cache_key, default_cache_dir, load_or_tune, lookup
from shaping.tuned.policy import TunedPlanPolicy, TunedStaticPolicy
from shaping.tuned.search import TRAIN_SEED, BaselineScore, TunedPlan, TuneSettings, tune_static

__all__ = [
    "TRAIN_SEED",
    "BaselineScore",
    "TuneSettings",
    "TunedPlan",
    "TunedPlanPolicy",
    "TunedStaticPolicy",
    "cache_key",
    "default_cache_dir",
    "load_or_tune",
    "lookup",
    "tune_static",
]
