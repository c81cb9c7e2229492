"""Offline scoring: ``python -m src.predict`` scores image and video files with the service's own
parts (decoding, face crop, video sampling and tracking, backends, aggregation) and no server."""

from src.predict.files import find_media
from src.predict.scoring import FileError, FileResult, FrameResult, Predictor, load_predictor

__all__ = ["FileError", "FileResult", "FrameResult", "Predictor", "find_media", "load_predictor"]
