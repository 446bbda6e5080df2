"""Training strategies (ERM, balanced, Group DRO, attention penalties): pure tensor code.

``STRATEGIES`` maps a strategy's name to its loss step; the penalties they use live in
``bias_audit.core.training._penalty`` and call the one Grad-CAM of :mod:`bias_audit.core.maps`.
"""

from __future__ import annotations

from bias_audit.core.training._strategies import STRATEGIES

__all__ = ["STRATEGIES"]
