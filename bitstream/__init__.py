"""Wire format: typed units, keypoint quantization and entropy coding (docs/bitstream.md)."""

from bitstream.frame import TIMESCALE, KeypointFrame

__all__ = ["TIMESCALE", "KeypointFrame"]
