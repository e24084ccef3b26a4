"""Face image quality: component measures, a unified score fitted per model, and quality gates.

Everything here is computed from what the shared pipeline already produced, never from a
second detection or crop path: the selected faces and their aligned crops of
:meth:`FaceMatcher.prepare <facematch.matcher.FaceMatcher.prepare>` (a :class:`PreparedImage`)
and the pre-normalisation feature norms of :meth:`FaceMatcher.embed_crops`.

Components (each a pure function below, each with its unit in :data:`COMPONENTS`):

* face size: inter-ocular distance and the detection box's short side, in original-image
  pixels; the share of the box inside the image (faces cut by the border);
* the detection score;
* head pose (yaw, pitch, roll in degrees): from the 5 landmarks by default, or from the
  pack's 106-point landmark model (``2d106det``) when asked for; both by a PnP fit
  (``cv2.solvePnP``) to a generic 3-D face (:data:`FACE_MODEL_5`, :data:`FACE_MODEL_6`);
* sharpness, brightness, contrast and clipped fractions of the aligned crop's face region;
* the feature norm (free: the embedder computes it anyway);
* optionally, mirror consistency: the cosine between the embeddings of the crop and of its
  horizontal flip. **It costs one more embedding per face**, so it is only computed when
  asked for (``mirror=True``).

The unified score (0-100, higher is better) is a small logistic model on standardised
components, fitted on a calibration set (``facematch quality fit``) and stored in the
embedder's card (:class:`~facematch.cards.QualityBlock`), because norms and score scales are
model-specific. A model whose card has no quality block still gets every component, and an
explicit ``unified_status="no_quality_model"`` instead of a score: a score is never invented.

A :class:`QualityPolicy` holds optional limits; :data:`ENROLMENT_POLICY` (strict) and
:data:`PROBE_POLICY` (lenient) are the defaults, documented in ``docs/quality.md`` with the
measurements behind their numbers. :class:`LowQualityError` lists every failing component,
its value and its limit.
"""

from __future__ import annotations

from .components import (
    ALIGNED_FACE_BOX,
    COMPONENT_NAMES,
    COMPONENTS,
    FACE_MODEL_5,
    FACE_MODEL_6,
    FACE_REGION,
    FRONTAL_5,
    LANDMARKS_106_FOR_MODEL_6,
    UNIFIED_UNIT,
    Component,
    Exposure,
    Pose,
    affine_pose,
    euler_angles,
    exposure,
    face_size,
    goodness,
    inter_ocular_distance,
    mirror_consistency,
    mirror_crops,
    pose_from_5,
    pose_from_106,
    sharpness,
    solve_pose,
    visible_fraction,
)
from .policy import (
    ENROLMENT_POLICY,
    NO_POLICY,
    POLICIES,
    POLICY_FIELDS,
    PROBE_POLICY,
    LowQualityError,
    QualityCheck,
    QualityFailure,
    QualityPolicy,
    policy_named,
)
from .score import (
    FEATURE_NAMES,
    FEATURES,
    FaceQuality,
    UnifiedStatus,
    assess,
    assess_each,
    assess_image,
    feature_vector,
    landmark_model,
    logistic_score,
    measure_mirror,
    pose_of_crops,
    unified_score,
)

__all__ = [
    "ALIGNED_FACE_BOX",
    "COMPONENTS",
    "COMPONENT_NAMES",
    "ENROLMENT_POLICY",
    "FACE_MODEL_5",
    "FACE_MODEL_6",
    "FACE_REGION",
    "FEATURES",
    "FEATURE_NAMES",
    "FRONTAL_5",
    "LANDMARKS_106_FOR_MODEL_6",
    "NO_POLICY",
    "POLICIES",
    "POLICY_FIELDS",
    "PROBE_POLICY",
    "UNIFIED_UNIT",
    "Component",
    "Exposure",
    "FaceQuality",
    "LowQualityError",
    "Pose",
    "QualityCheck",
    "QualityFailure",
    "QualityPolicy",
    "UnifiedStatus",
    "affine_pose",
    "assess",
    "assess_each",
    "assess_image",
    "euler_angles",
    "exposure",
    "face_size",
    "feature_vector",
    "goodness",
    "inter_ocular_distance",
    "landmark_model",
    "logistic_score",
    "measure_mirror",
    "mirror_consistency",
    "mirror_crops",
    "policy_named",
    "pose_from_5",
    "pose_from_106",
    "pose_of_crops",
    "sharpness",
    "solve_pose",
    "unified_score",
    "visible_fraction",
]
