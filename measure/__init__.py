"""
The yardstick: how we know the method works. It imports the method (train.py, sample.py); nothing in
the method imports it. Each command runs from the repository root, and `--help` says the rest:

    python -m measure.benchmark      the memory modes side by side on long videos, with paired intervals
    python -m measure.report         every trained model in a checkpoint folder next to ground truth
    python -m measure.world_stats    how long ground truth hides its sprites, against what sink + window hold
    python -m measure.memory_trace   the cache's size and the process's memory along a very long stream

    metrics.py   the measures, read from the pixels with the world's palette; each docstring says what
                 it reads and what ground truth scores

Frames are (B, F, C, H, W) RGB in [-1, 1], with the letters of docs/notation.md (and P, the palette's
colours); a measure returns a float over the batch, or one value per clip, (B,), where intervals need it.
"""
