"""Offline long-video metrics (no downloaded weights) and `vin evaluate`.

* :mod:`vin.eval.metrics` - pure functions on ``(T, H, W, 3)`` uint8 frames: VBench's temporal
  flickering, motion smoothness with a classical interpolator (``motion_smoothness_proxy``),
  dynamic degree with Farneback/DIS flow, warp error and MAWE, scene cuts (PySceneDetect),
  subject/background consistency over a pluggable feature, seam score and drift.
* :mod:`vin.eval.features` - the pluggable frame similarities ("pixels", "ssim", "hist", and
  "dino:PATH" / "clip:PATH" when a local checkpoint is given).
* :mod:`vin.eval.identity` - exact identity consistency in the synthetic sprite world.
* :mod:`vin.eval.evaluate` - everything on one video (`evaluate_frames`) or on files and folders
  (`evaluate_paths`), as a JSON-able dict.

Only numpy and OpenCV are imported here; PySceneDetect, torch and open_clip are imported inside
the functions that need them.
"""

__all__ = ["evaluate_frames", "evaluate_paths", "FEATURES", "get_feature"]


def __getattr__(name: str):  # lazy, so `import vin.eval.metrics` does not pull in the rest
    if name in ("evaluate_frames", "evaluate_paths"):
        from vin.eval import evaluate

        return getattr(evaluate, name)
    if name in ("FEATURES", "get_feature"):
        from vin.eval import features

        return getattr(features, name)
    raise AttributeError(f"module 'vin.eval' has no attribute {name!r}")
