"""Shipped case studies: data generators that reproduce published dataset-bias experiments.

``CASE_STUDIES`` maps a case study's name (as given to ``bias-audit case-study NAME``) to the
module that generates its data. ``run_case_study(name)`` runs one end to end: data, trained
models, audit, report and the acceptance checks of ``case_studies/<name>/expected.toml``.
"""

from __future__ import annotations

from bias_audit.case_studies import nurse_doctor, waterbirds
from bias_audit.case_studies._registry import CASE_STUDIES
from bias_audit.case_studies._runner import (
    AcceptanceCheck,
    CaseStudyResult,
    check_acceptance,
    load_expected,
    run_case_study,
)

__all__ = [
    "CASE_STUDIES",
    "AcceptanceCheck",
    "CaseStudyResult",
    "check_acceptance",
    "load_expected",
    "nurse_doctor",
    "run_case_study",
    "waterbirds",
]
