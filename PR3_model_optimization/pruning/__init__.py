"""Pruning engines behind ``model_pruning.py``.

- :mod:`.structured`: remove whole channels with torch-pruning (smaller and faster).
- :mod:`.unstructured`: zero the smallest weights (not faster; compressible on disk).
- :mod:`.latency`: time variants in turns; prune until a measured latency target is met.
- :mod:`.fine_tune`: fine-tune (optionally with a teacher) and score.
- :mod:`.run`: one run's steps, in the order ``model_pruning.main`` calls them.
- :mod:`.config`: the typed settings those steps take, built by ``model_pruning.py`` from its flags.
"""
