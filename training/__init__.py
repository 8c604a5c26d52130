"""Pieces of the training loop that the train stage and the training benchmark share.

Layer 3: imports ``core``, ``data`` and ``models``; imported by ``stages/train.py`` and
``benchmarks/bench_train.py``, so the benchmark times exactly the step that training runs.
"""
