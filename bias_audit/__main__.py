"""``python -m bias_audit`` is the ``bias-audit`` command."""

import sys

from .cli import main

sys.exit(main())
