"""The receiving half: keyframe decoding, source K/V cache, frame reconstruction, writers.

Entry points: ``receiver.decoder.decode_file`` (an ``.iwc`` stream to a video file),
``receiver.decoder.Decoder`` (incremental, unit by unit, for calls) and
``receiver.decoder.inspect_stream`` (``iwcodec info``). Both the file decoder and a call's
receiver (``receiver.live``) render through one receive core, ``receiver.sources.SourceSet``
(the keyframe set and rendering from it).
"""
