"""The training phases, one module each with its ``PHASE`` record (pipeline/semples/phase.py
finds them here): train_cam, match, learn_prompts, refine; ``common`` holds what they share."""
from pipeline.semples.phases.train_cam import warm_start_param_groups  # noqa: F401 (tests/test_fidelity.py)
