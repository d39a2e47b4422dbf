"""`python -m gate --config F --bind HOST:PORT --certfile F --keyfile F` (see gate/serve.py)."""

import sys

from gate.serve import main

sys.exit(main())
