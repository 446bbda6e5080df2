"""Shipped case studies: data generators that reproduce published dataset-bias experiments.

``CASE_STUDIES`` maps a case study's name (as given to ``bias-audit case-study NAME``) to the
module that generates its data. The runner that trains, audits and reports is added on top.
"""

from __future__ import annotations

from types import ModuleType

from . import nurse_doctor

__all__ = ["CASE_STUDIES", "nurse_doctor"]

#: name -> generator module (each has ``generate(out_dir, *, seed, image_size, n, quick, force)``,
#: ``SPLITS``, ``CLASSES``, ``REGIONS`` and ``ROLES``).
CASE_STUDIES: dict[str, ModuleType] = {"nurse-doctor": nurse_doctor}
