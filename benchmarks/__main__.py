"""``python -m benchmarks``: run the benchmark suite (``--help`` lists the options)."""

from benchmarks.runner import main

raise SystemExit(main())
