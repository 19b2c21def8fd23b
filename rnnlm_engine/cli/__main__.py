"""python -m rnnlm_engine.cli: the rnnlm command."""

import sys

from . import main

sys.exit(main())
