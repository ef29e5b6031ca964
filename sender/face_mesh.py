"""MediaPipe's face mesh, wrapped once: the crop cache's landmarks (training's semantic
dropout, sender.cache) and the AKD score (eval.akd) both run it through :class:`FaceMesh`.

The mesh is MediaPipe's 478-point model (468 mesh points + 10 iris points,
``refine_landmarks=True``) from the bundled mediapipe 0.10.21 models, one face at a time.
Its C++ graph prints log lines of its own (``W0000 ... landmark_projection_calculator.cc``,
TFLite's delegate lines) when it is built, on its first run, and the first time it finds a
face; all three happen inside :func:`iwcodec.native_logs.quiet_native_stderr` here, so no
command shows them (``iwcodec --verbose`` lets them through).
"""

from __future__ import annotations

import numpy as np

from iwcodec.native_logs import quiet_native_stderr, warm_up

N_LANDMARKS = 478


class FaceMesh:
    """MediaPipe face mesh on RGB uint8 frames (H, W, 3); close() or use ``with``.

    ``tracking=True`` follows one face through a video (MediaPipe's tracking mode: a frame's
    landmarks start from the last frame's, so use one instance per clip);
    ``tracking=False`` treats every frame on its own (``static_image_mode``), so a frame's
    landmarks do not depend on earlier ones.
    """

    def __init__(
        self,
        tracking: bool,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        # Imported here: mediapipe takes seconds to import, and most commands never need it.
        import mediapipe as mp

        with quiet_native_stderr():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=not tracking,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence,
            )
            warm_up(self._mesh)
        # The graph logs a warning the first time it projects a face's landmarks, which the
        # warm-up (a black image, no face) cannot reach: quiet every run until one finds a face.
        self._quiet = True

    def points(self, frame: np.ndarray) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB -> the face's (478, 2) float64 (x, y) in [0, 1] of the frame's
        width and height, or None when no face is found."""
        frame = np.ascontiguousarray(frame)
        if self._quiet:
            with quiet_native_stderr():
                result = self._mesh.process(frame)
            self._quiet = not result.multi_face_landmarks
        else:
            result = self._mesh.process(frame)
        if not result.multi_face_landmarks:
            return None
        pts = result.multi_face_landmarks[0].landmark
        if len(pts) != N_LANDMARKS:
            return None
        return np.array([(p.x, p.y) for p in pts], dtype=np.float64)  # (478, 2)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
