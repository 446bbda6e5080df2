"""The registry of shipped case studies: a name on the command line -> its generator module."""

from __future__ import annotations

from types import ModuleType

from bias_audit.case_studies import nurse_doctor, waterbirds

__all__ = ["CASE_STUDIES"]

#: name -> generator module (each has ``generate(out_dir, *, seed, image_size, n, quick, force)``,
#: ``SPLITS``, ``CLASSES``, ``REGIONS`` and ``ROLES``).
CASE_STUDIES: dict[str, ModuleType] = {"nurse-doctor": nurse_doctor, "waterbirds": waterbirds}
