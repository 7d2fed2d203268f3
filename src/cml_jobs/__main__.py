"""``python -m cml_jobs``."""

from __future__ import annotations

from cml_jobs.cli import main

main(prog_name="cml-jobs")
