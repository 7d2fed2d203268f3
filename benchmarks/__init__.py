"""Benchmarks of cml-jobs against raw arq on a real Redis: ``python -m benchmarks``.

See ``benchmarks/README.md``. Kept light: worker processes import ``benchmarks.jobs`` and
``benchmarks.arq_jobs``, which import this package first.
"""
