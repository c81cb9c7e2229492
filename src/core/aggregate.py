"""Frame scores to one video score: the rules a request (or an evaluation) may choose.

* ``"mean"``: the average fake probability of the scored frames.
* ``"max"``: the most suspicious frame decides (sensitive: one bad frame flags the video).
* ``"confident"``: the rule of the DFDC winner (Selim Seferbekov, "confident_strategy" in
  github.com/selimsef/dfdc_deepfake_challenge, ``kernel_utils.py``). Frames the model is sure
  of outweigh the rest: a fake face often shows its artefacts in only part of a video, and the
  mean of all frames would dilute them.

  - if more than ``n / 2.5`` of the ``n`` frames are confidently fake (``p > 0.8``) and more
    than ``11 / 32 * n`` of them (the original asks for more than 11 of its 32 frames), the
    score is the mean of those confident fakes;
  - else, if more than 90 % of the frames are confidently real (``p < 0.2``), the mean of those;
  - else the mean of all frames.

  The original's absolute minimum of 11 frames is scaled to the number of frames, because a
  request here may sample from 1 to ``DFD_VIDEO_MAX_FRAMES`` frames; at 32 frames the rule is
  the original's exactly (``count > n / 2.5`` is its ``count > n // 2.5`` for whole counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

__all__ = ["AGGREGATE_RULES", "DEFAULT_AGGREGATE", "AggregateRule", "aggregate"]

AggregateRule = Literal["mean", "max", "confident"]
AGGREGATE_RULES: tuple[str, ...] = get_args(AggregateRule)
DEFAULT_AGGREGATE: AggregateRule = "confident"

FAKE_CONFIDENCE = 0.8  # p above this: a confidently fake frame
REAL_CONFIDENCE = 0.2  # p below this: a confidently real frame
FAKE_SHARE_DIVISOR = 2.5  # more than n / 2.5 confident fakes ...
FAKE_MIN_PER_32 = 11  # ... and more than 11 of every 32 frames
REAL_SHARE = 0.9  # more than 90 % confident reals


def aggregate(probs: Sequence[float], rule: AggregateRule) -> float:
    """The video's fake probability from its frames' (see the module docstring for the rules).

    Raises ``ValueError`` for no frames, a probability outside [0, 1], or an unknown rule.
    """
    values = [float(p) for p in probs]
    if not values:
        raise ValueError("no frame scores to aggregate")
    if any(not (0.0 <= p <= 1.0) for p in values):  # also refuses NaN
        raise ValueError("frame scores must be probabilities in [0, 1]")
    if rule == "mean":
        return math.fsum(values) / len(values)
    if rule == "max":
        return max(values)
    if rule == "confident":
        return _confident(values)
    raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {AGGREGATE_RULES}")


def _confident(values: list[float]) -> float:
    n = len(values)
    fakes = [p for p in values if p > FAKE_CONFIDENCE]
    if len(fakes) > n / FAKE_SHARE_DIVISOR and len(fakes) > FAKE_MIN_PER_32 * n / 32:
        return math.fsum(fakes) / len(fakes)
    reals = [p for p in values if p < REAL_CONFIDENCE]
    if len(reals) > REAL_SHARE * n:
        return math.fsum(reals) / len(reals)
    return math.fsum(values) / n
