"""kunpay's benchmarks (issue 7), not tests: ``benchmarks/e2e.py`` and ``benchmarks/pending.py``.

Each run starts its own RabbitMQ vhost, database, provider sandbox and worker processes, measures,
prints a table and writes JSON (``benchmarks/results/``, git-ignored).
"""
