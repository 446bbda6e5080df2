"""A factory that leaves a marker file when called: the proof that a checkpoint ran code."""

import os

MARKER_ENV = "BIAS_AUDIT_TEST_MARKER"


def build(num_classes: int):
    with open(os.environ[MARKER_ENV], "w") as fh:
        fh.write("ran")
    raise SystemExit("the factory ran")
