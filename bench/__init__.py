"""The performance suite (`make bench`, `python -m bench [--quick]`).

Where to start reading: ``run.py`` (the steps, one broker for the run), ``harness.py``
(required names, baselines, targets, sizes), ``baselines.py`` (Kafka's perf tools, raw
aiokafka and HTTP loops), ``stages.py`` (each service driven as a black box), ``e2e.py``
(open-loop latency, RSS, CPU), ``report.py`` (BENCHMARKS.md), ``profile.py`` (py-spy).
"""
