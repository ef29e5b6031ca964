"""The sending half: video input, face crop, keyframe coding, the offline encoder.

Entry points: ``sender.encoder.encode_file`` (a video file to an ``.iwc`` stream) and
``sender.encoder.encode_frames`` (face crops to a stream). Modules are imported on demand so
that ``sender.video`` stays light (no torch or MediaPipe until a crop is needed).
"""
