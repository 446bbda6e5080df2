import subprocess
import sys

import pytest

import bias_audit
from bias_audit import errors


def test_import_is_cheap():
    # plotly and jinja2 are only for the report: importing the package must not load them.
    code = (
        "import sys, bias_audit; "
        "bad = [m for m in ('plotly', 'jinja2') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_all_errors_are_bias_audit_errors():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.BiasAuditError)


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no_such_thing"):
        bias_audit.no_such_thing  # noqa: B018
