"""``python -m bias_audit`` is the ``bias-audit`` command."""

import sys

from bias_audit.cli import main

sys.exit(main())
