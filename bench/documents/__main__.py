"""`python -m bench.documents`: the gold set's scores (see bench/documents/__init__.py)."""

import sys

from bench.documents import main

sys.exit(main())
