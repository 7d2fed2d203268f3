"""``python -m cml_jobs``."""

from __future__ import annotations

import sys

from cml_jobs._cli import main

sys.exit(main())
