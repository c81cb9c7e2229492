"""Load benchmark for the inference service: ``python -m bench --checkpoint PATH``.

Not part of CI. See ``bench/README.md`` for what it measures and the targets it checks.
"""
