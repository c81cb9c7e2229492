"""Training: ``python -m src.train`` (see :mod:`src.train.__main__`).

``dataset`` finds and loads labelled frames, ``trainer`` runs epochs, ``checkpoint`` keeps
best/last checkpoints and resume state, ``metrics`` scores detectors, ``evaluate`` compares
checkpoints on a split, ``pretrained`` supplies offline initial weights.
"""
