"""Wire format: typed units, keypoint quantization and entropy coding (docs/bitstream.md)."""

from bitstream.cutting import UnitCutter
from bitstream.entropy import (
    CodingStatistics,
    EntropyModel,
    collect_statistics,
    fit_prior,
    load_prior,
)
from bitstream.errors import BitstreamWarning, TruncatedStreamError
from bitstream.frame import TIMESCALE, KeypointFrame
from bitstream.keypoints import (
    DEFAULT_FRAMES_PER_UNIT,
    DEFAULT_RESYNC_PERIOD,
    DecodeResult,
    KeypointDecoder,
    KeypointEncoder,
    encode_track,
)
from bitstream.pacing import KeyframePacer
from bitstream.quant import CANDIDATE_STEPS, dequantize, quantize, requantize
from bitstream.stream import StreamWriter, UnitRecord, read_units, scan_stream
from bitstream.units import (
    KEYFRAME_SLOTS,
    EndUnit,
    Fill,
    ImageCodec,
    KeyframeUnit,
    KeypointUnit,
    NoFaceUnit,
    ParamsUnit,
    Predictor,
    Unit,
    UnitType,
    keyframe_slot,
    parse_packet,
    parse_unit,
)

__all__ = [
    "CANDIDATE_STEPS",
    "DEFAULT_FRAMES_PER_UNIT",
    "DEFAULT_RESYNC_PERIOD",
    "KEYFRAME_SLOTS",
    "TIMESCALE",
    "BitstreamWarning",
    "CodingStatistics",
    "DecodeResult",
    "EndUnit",
    "EntropyModel",
    "Fill",
    "ImageCodec",
    "KeyframePacer",
    "KeyframeUnit",
    "KeypointDecoder",
    "KeypointEncoder",
    "KeypointFrame",
    "KeypointUnit",
    "NoFaceUnit",
    "ParamsUnit",
    "Predictor",
    "StreamWriter",
    "TruncatedStreamError",
    "Unit",
    "UnitCutter",
    "UnitRecord",
    "UnitType",
    "collect_statistics",
    "dequantize",
    "encode_track",
    "fit_prior",
    "keyframe_slot",
    "load_prior",
    "parse_packet",
    "parse_unit",
    "quantize",
    "read_units",
    "requantize",
    "scan_stream",
]
