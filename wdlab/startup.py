"""A stage process's start-up: the cyclic garbage collector waits while the stage imports its libraries.

A stage imports torch, MLflow, pandas or seaborn before any work: hundreds of thousands of objects, none of them
garbage, which the collector would traverse again and again while they load, and once more when the interpreter
exits. Measured on a 2-core CPU for a stage that imports torch and MLflow's sqlite store: 2.9 s of imports and
1.3 s of exit became 2.0 s and 0.2 s. `stages/__init__.py` raises the collection threshold before a stage
imports anything; `wdlab.stage.run_stage` freezes what the imports made (`gc.freeze`: kept, never traversed
again) and sets the threshold back before any work. A process that imports a stage module without running it
(the tests) keeps a collector that runs less often, never one that is off.
"""

from __future__ import annotations

import gc

DEFAULT_THRESHOLD = gc.get_threshold()
IMPORT_THRESHOLD = (1_000_000, 20, 100)  # a collection every million new objects instead of every 700


def defer_collection() -> None:
    gc.set_threshold(*IMPORT_THRESHOLD)


def resume_collection() -> None:
    gc.freeze()
    gc.set_threshold(*DEFAULT_THRESHOLD)
