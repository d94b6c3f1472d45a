"""`python -m bench.pipeline [options]` (from the repository root): see bench/README.md."""

import sys

from bench.pipeline.cli import main

sys.exit(main())
