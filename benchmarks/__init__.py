"""The benchmarks: one module per question, each writing JSON (and its plot) under
``benchmarks/results/``.

Run them from the repository root as modules of this package, e.g.
``python -m benchmarks.cifar10_evaluate --help``; gatekit and the examples' training package
(``gaternet_training``) come from ``pip install -e ".[examples]"``.  What several of them
share lives in two public modules: :mod:`benchmarks.run_files` (reading the CIFAR-10 runs'
results files) and :mod:`benchmarks.cpu_timing` (timing on the CPU and the models timed).
"""
