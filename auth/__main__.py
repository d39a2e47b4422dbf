"""`python -m auth --config F --bind 127.0.0.1:PORT --certfile F --keyfile F` (see auth/serve.py)."""

import sys

from auth.serve import main

sys.exit(main())
