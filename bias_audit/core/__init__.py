"""The pure core: tensors and DataFrames in, typed results out.

No files, no command-line words; it imports nothing of the package but :mod:`bias_audit.errors`.
"""
