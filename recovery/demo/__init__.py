"""The demo: a synthetic park with its ground truth (generator) and `make demo`'s pipeline over it (pipeline).

It sits above both layers: the generator reads identity.domain, the pipeline runs recovery's jobs.
"""

from recovery.demo.pipeline import demo_run, demo_user_instructions, demo_user_reset

__all__ = ["demo_run", "demo_user_instructions", "demo_user_reset"]
