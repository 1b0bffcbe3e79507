"""``python -m verbalize.cli``: the ``verbalize`` command."""

import sys

from verbalize.cli.main import main

sys.exit(main())
