"""Training: ``python -m src.train`` (see :mod:`src.train.__main__`).

``config`` holds ``TrainConfig`` and derives the command line from it, ``dataset`` finds and loads
labelled frames, ``trainer`` runs epochs, ``saver`` decides which checkpoints to keep (best, last,
top-N) and ``checkpoint`` writes them with resume state, ``metrics_csv`` logs each epoch,
``metrics`` scores detectors, ``evaluate`` compares checkpoints on a split, ``pretrained``
supplies offline initial weights.
"""
