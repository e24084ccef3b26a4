"""A Python client for the facematch REST server, returning the SDK's own typed results.

    from facematch.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as fm:
        fm.verify("a.jpg", "b.jpg")                       # VerifyResult, as FaceMatcher.verify gives
        fm.verify_identity("alice", "probe.jpg")          # IdentityVerifyResult, as Gallery.verify
        fm.verify_many([("a.jpg", "b.jpg"), ("a.jpg", "c.jpg")])   # VerifyBatchResult
        fm.identify("probe.jpg", k=3)                     # IdentifyResult

Errors come back as the same :class:`~facematch.errors.FacematchError` subclasses the SDK raises,
chosen by the problem+json ``code`` (``NoFaceError`` for ``no_face``, ``IdentityNotFoundError``
for ``identity_not_found``, the server's own ``UnauthorizedError``, ``OverloadedError``, ...).
Calls that change nothing, or change it idempotently (everything but creating an identity and
adding templates), are retried on 429 and 503 (and on a refused connection), waiting what
``Retry-After`` says, at most ``max_retries`` times and ``max_retry_wait`` seconds per wait.

Needs httpx: ``pip install "facematch[client]"``. Images are paths, bytes, BGR numpy arrays or
PIL images; they travel as multipart file parts.
"""

from __future__ import annotations

import email.utils
import functools
import io
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from .batch import check_index_pairs, distinct_images
from .errors import BackendUnavailableError, FacematchError, InvalidArgumentError
from .gallery.store import validate_identity_id
from .gallery.types import EnrollReport, IdentityInfo, ImageOutcome, Page
from .types import (
    Candidate,
    Detections,
    Face,
    FaceEmbedding,
    IdentifyResult,
    IdentityVerifyResult,
    PairResult,
    TemplateScore,
    VerifyBatchResult,
    VerifyResult,
)

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

RETRY_STATUSES = (429, 503)
Files = list[tuple[str, tuple[str, bytes, str]]]


@functools.lru_cache(maxsize=1)
def error_classes() -> Mapping[str, type[FacematchError]]:
    """problem+json ``code`` -> the error class that carries it: every facematch error class, SDK and server."""
    from .server import errors as _server_errors  # noqa: F401  (light: registers the server's classes)

    table: dict[str, type[FacematchError]] = {}
    todo: list[type[FacematchError]] = [FacematchError]
    while todo:
        cls = todo.pop(0)
        if cls.__module__.startswith("facematch."):
            table.setdefault(cls.code, cls)  # a subclass that keeps its parent's code maps to the parent
        todo.extend(cls.__subclasses__())
    return MappingProxyType(table)


def error_from_problem(status: int, body: Any) -> FacematchError:
    """The :class:`FacematchError` a problem+json body describes (a plain one for an unknown code)."""
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        err = FacematchError(f"HTTP {status} without a problem+json body")
        err.code, err.http_status = f"http_{status}", status
        return err
    code = body["code"]
    message = str(body.get("detail") or body.get("title") or code)
    details = dict(body.get("details") or {})
    if body.get("errors"):
        details["errors"] = body["errors"]
    cls = error_classes().get(code)
    if cls is None:
        err = FacematchError(message, **details)
        err.code, err.http_status = code, status
        return err
    try:
        out = cls(message, **details)
    except TypeError:  # a class with another constructor
        out = FacematchError(message, **details)
        out.code = code
    out.http_status = status
    return out


def _retry_after(value: str | None, attempt: int) -> float:
    """Seconds to wait: ``Retry-After`` (seconds or an HTTP date), else 0.5 s doubling per attempt."""
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return 0.5 * (2**attempt)


def _image_part(image: Any, i: int) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of one image input."""
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        return p.name, p.read_bytes(), "application/octet-stream"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"image{i}", bytes(image), "application/octet-stream"
    if isinstance(image, np.ndarray):
        import cv2

        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise InvalidArgumentError(f"cannot encode an array of shape {image.shape} as an image")
        return f"image{i}.png", buf.tobytes(), "image/png"
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL
        out = io.BytesIO()
        image.save(out, format="PNG")
        return f"image{i}.png", out.getvalue(), "image/png"
    raise InvalidArgumentError(f"an image is a path, bytes, a numpy array or a PIL image, not {type(image).__name__}")


def _face(d: dict[str, Any] | None) -> Face | None:
    return None if d is None else Face(box=d["box"], score=d["score"], landmarks=d["landmarks"])


def _verify_result(d: dict[str, Any]) -> VerifyResult:
    return VerifyResult(
        is_match=bool(d["is_match"]),
        similarity=float(d["similarity"]),
        threshold=float(d["threshold"]),
        face1=_face(d.get("face1")),
        face2=_face(d.get("face2")),
        model_id=d.get("model_id", ""),
        target_fmr=d.get("target_fmr"),
    )


def _identification(d: dict[str, Any], gallery_size: int) -> IdentifyResult:
    return IdentifyResult(
        candidates=tuple(
            Candidate(
                identity_id=c["identity_id"],
                similarity=float(c["similarity"]),
                estimated_fmr=c.get("estimated_fmr"),
                template_id=c.get("template_id"),
                metadata=dict(c.get("metadata") or {}),
                estimated_fmr_below_resolution=bool(c.get("estimated_fmr_below_resolution", False)),
            )
            for c in d["candidates"]
        ),
        threshold=float(d["threshold"]),
        is_unknown=bool(d["is_unknown"]),
        face=_face(d.get("face")),
        target_fpir=d.get("target_fpir"),
        gallery_size=gallery_size,
        threshold_extrapolated=bool(d.get("threshold_extrapolated", False)),
        comparisons=int(d.get("comparisons", 0)),
        fmr_resolution=d.get("fmr_resolution"),
    )


def _identity_info(d: dict[str, Any]) -> IdentityInfo:
    return IdentityInfo(
        identity_id=d["identity_id"],
        template_ids=tuple(int(t) for t in d["template_ids"]),
        metadata=dict(d.get("metadata") or {}),
        created_at=float(d.get("created_at", 0.0)),
        updated_at=float(d.get("updated_at", 0.0)),
    )


def _enroll_report(d: dict[str, Any]) -> EnrollReport:
    outcomes = tuple(
        ImageOutcome(
            index=int(o["index"]),
            source=o["source"],
            status=o["status"],
            template_id=o.get("template_id"),
            face=_face(o.get("face")),
            faces_found=int(o.get("faces_found", 0)),
            error=o.get("error"),
        )
        for o in d["outcomes"]
    )
    return EnrollReport(identity_id=d["identity_id"], outcomes=outcomes, created=bool(d["created"]))


def _batch_result(d: dict[str, Any]) -> VerifyBatchResult:
    threshold, target, model_id = float(d["threshold"]), d.get("target_fmr"), d.get("model_id", "")
    pairs = []
    for p in d["results"]:
        if p.get("error") is not None:
            e = p["error"]
            details = {"reasons": e["reasons"]} if e.get("reasons") is not None else {}  # low_quality
            err = error_from_problem(422, {"code": e["code"], "detail": e["detail"], "details": details})
            pairs.append(PairResult(int(p["index"]), int(p["image1"]), int(p["image2"]), error=err))
            continue
        result = VerifyResult(
            is_match=bool(p["is_match"]),
            similarity=float(p["similarity"]),
            threshold=threshold,
            face1=_face(p.get("face1")),
            face2=_face(p.get("face2")),
            model_id=model_id,
            target_fmr=target,
        )
        pairs.append(PairResult(int(p["index"]), int(p["image1"]), int(p["image2"]), result=result))
    return VerifyBatchResult(
        pairs=tuple(pairs), threshold=threshold, target_fmr=target, model_id=model_id, images=int(d.get("images", 0))
    )


class Client:
    """The REST server's operations as methods returning the SDK's result types.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000`` (add ``/v1`` to pin the version prefix).
        api_key: sent as ``Authorization: Bearer <key>`` (``None``: a server without keys).
        timeout: seconds per request (connect, read, write).
        max_retries: retries of an idempotent call on 429/503 or a refused connection.
        max_retry_wait: the longest single wait between retries, in seconds.
        transport: an ``httpx`` transport (tests, proxies); ``headers``: extra headers on every request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BackendUnavailableError('the client needs httpx: pip install "facematch[client]"') from exc
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidArgumentError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        sent = dict(headers or {})
        if api_key is not None:
            sent["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_retry_wait = float(max_retry_wait)
        self._httpx = httpx
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=sent, transport=transport)

    # ---- plumbing ----------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        """Send, retrying idempotent calls on 429/503/refused connections; the JSON body, or the mapped error."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except self._httpx.ConnectError:
                if not idempotent or attempt >= self.max_retries:
                    raise
                wait = _retry_after(None, attempt)
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                retry = idempotent and response.status_code in RETRY_STATUSES and attempt < self.max_retries
                if not retry:
                    raise self._error(response)
                wait = _retry_after(response.headers.get("Retry-After"), attempt)
            wait = min(wait, self.max_retry_wait)
            logger.info(
                "%s %s: retrying in %.1f s (attempt %d of %d)", method, path, wait, attempt + 1, self.max_retries
            )
            time.sleep(wait)
            attempt += 1

    @staticmethod
    def _error(response: httpx.Response) -> FacematchError:
        try:
            body = response.json()
        except ValueError:
            body = None
        err = error_from_problem(response.status_code, body)
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None:
            err.details.setdefault("retry_after", retry_after)
        return err

    @staticmethod
    def _files(name: str, images: Sequence[Any]) -> Files:
        return [(name, _image_part(img, i)) for i, img in enumerate(images)]

    @staticmethod
    def _fields(**values: Any) -> dict[str, str]:
        return {k: str(v) for k, v in values.items() if v is not None}

    @staticmethod
    def _identity_path(identity_id: str) -> str:
        return "/gallery/identities/" + urllib.parse.quote(validate_identity_id(identity_id), safe="")

    # ---- operations --------------------------------------------------------------------------
    def health(self) -> bool:
        """True while the server process answers (``GET /healthz``)."""
        return bool(self._request("GET", "/healthz", idempotent=False)["status"] == "ok")

    def ready(self) -> bool:
        """True once the server's models (and gallery) are loaded (``GET /readyz``; no retries)."""
        response = self._http.get("/readyz")
        return response.status_code == 200 and bool(response.json().get("ready"))

    # ---- matching ----------------------------------------------------------------------------
    def verify(
        self, image1: Any, image2: Any, *, threshold: float | None = None, fmr: float | None = None
    ) -> VerifyResult:
        """``POST /verify``: the largest face of each image compared, as :meth:`FaceMatcher.verify`."""
        files = [("image1", _image_part(image1, 1)), ("image2", _image_part(image2, 2))]
        body = self._request(
            "POST", "/verify", idempotent=True, files=files, data=self._fields(threshold=threshold, fmr=fmr)
        )
        return _verify_result(body)

    def verify_batch(
        self,
        images: Sequence[Any],
        pairs: Sequence[Sequence[int]],
        *,
        threshold: float | None = None,
        fmr: float | None = None,
    ) -> VerifyBatchResult:
        """``POST /verify/batch``: ``pairs`` index into ``images``; each image is processed once."""
        import json

        checked = check_index_pairs(pairs, len(images))
        data = self._fields(threshold=threshold, fmr=fmr)
        data["pairs"] = json.dumps([list(p) for p in checked])
        body = self._request("POST", "/verify/batch", idempotent=True, files=self._files("images", images), data=data)
        return _batch_result(body)

    def verify_many(
        self, pairs: Sequence[tuple[Any, Any]], *, threshold: float | None = None, fmr: float | None = None
    ) -> VerifyBatchResult:
        """:meth:`FaceMatcher.verify_many` over HTTP: image pairs, each distinct image sent once."""
        images, index_pairs = distinct_images(pairs)
        return self.verify_batch(images, index_pairs, threshold=threshold, fmr=fmr)

    def identify(
        self, image: Any, *, k: int = 5, threshold: float | None = None, fpir: float | None = None
    ) -> IdentifyResult:
        """``POST /identify`` for the largest face, as :meth:`Gallery.identify`."""
        return self.identify_faces(image, k=k, threshold=threshold, fpir=fpir, faces="largest")[0]

    def identify_faces(
        self,
        image: Any,
        *,
        k: int = 5,
        threshold: float | None = None,
        fpir: float | None = None,
        faces: str = "all",
    ) -> list[IdentifyResult]:
        """``POST /identify`` with ``faces=all``: one result per face, largest first."""
        data = self._fields(k=k, threshold=threshold, fpir=fpir, faces=faces)
        body = self._request("POST", "/identify", idempotent=True, files=self._files("image", [image]), data=data)
        return [_identification(r, int(body["gallery_size"])) for r in body["results"]]

    def detect(self, image: Any) -> Detections:
        """``POST /detect``: every face, largest first (at most the server's ``max_faces_per_image``)."""
        body = self._request("POST", "/detect", idempotent=True, files=self._files("image", [image]))
        return Detections.from_faces([f for f in (_face(d) for d in body["faces"]) if f is not None])

    def embed(self, image: Any, *, faces: str = "largest") -> list[FaceEmbedding]:
        """``POST /embed`` (the server must enable it; the key needs the ``embed`` scope)."""
        data = self._fields(faces=faces)
        body = self._request("POST", "/embed", idempotent=True, files=self._files("image", [image]), data=data)
        return [
            FaceEmbedding(
                face=_face(e.get("face")), vector=np.asarray(e["vector"], np.float32), model_id=body["model_id"]
            )
            for e in body["embeddings"]
        ]

    # ---- gallery -----------------------------------------------------------------------------
    def enroll(self, identity_id: str, images: Sequence[Any], metadata: dict[str, Any] | None = None) -> EnrollReport:
        """``POST /gallery/identities``: create an identity, one template per image (not retried)."""
        import json

        data = {"identity_id": validate_identity_id(identity_id)}
        if metadata is not None:
            data["metadata"] = json.dumps(metadata)
        files = self._files("images", list(images))
        return _enroll_report(self._request("POST", "/gallery/identities", idempotent=False, files=files, data=data))

    def add_templates(self, identity_id: str, images: Sequence[Any]) -> EnrollReport:
        """``POST /gallery/identities/{id}/templates`` (not retried)."""
        path = self._identity_path(identity_id) + "/templates"
        body = self._request("POST", path, idempotent=False, files=self._files("images", list(images)))
        return _enroll_report(body)

    def verify_identity(
        self, identity_id: str, image: Any, *, threshold: float | None = None, fmr: float | None = None
    ) -> IdentityVerifyResult:
        """``POST /gallery/identities/{id}/verify``: 1:1 against an enrolled identity, as :meth:`Gallery.verify`."""
        path = self._identity_path(identity_id) + "/verify"
        files = self._files("image", [image])
        body = self._request(
            "POST", path, idempotent=True, files=files, data=self._fields(threshold=threshold, fmr=fmr)
        )
        return IdentityVerifyResult(
            identity_id=body["identity_id"],
            is_match=bool(body["is_match"]),
            similarity=float(body["similarity"]),
            threshold=float(body["threshold"]),
            templates=tuple(TemplateScore(int(t["template_id"]), float(t["similarity"])) for t in body["templates"]),
            aggregation=body["aggregation"],
            face=_face(body.get("face")),
            model_id=body["model_id"],
            target_fmr=body.get("target_fmr"),
            metadata=dict(body.get("metadata") or {}),
        )

    def list_identities(self, limit: int = 50, cursor: str | None = None) -> Page:
        """``GET /gallery/identities``: a page; pass ``page.next_cursor`` for the next."""
        params = self._fields(limit=limit, cursor=cursor)
        body = self._request("GET", "/gallery/identities", idempotent=True, params=params)
        return Page(items=tuple(_identity_info(i) for i in body["items"]), next_cursor=body.get("next_cursor"))

    def get_identity(self, identity_id: str) -> IdentityInfo:
        return _identity_info(self._request("GET", self._identity_path(identity_id), idempotent=True))

    def set_metadata(self, identity_id: str, metadata: dict[str, Any]) -> IdentityInfo:
        """``PATCH /gallery/identities/{id}``: replace the identity's metadata, as :meth:`Gallery.set_metadata`."""
        body = self._request("PATCH", self._identity_path(identity_id), idempotent=True, json={"metadata": metadata})
        return _identity_info(body)

    def delete_identity(self, identity_id: str) -> IdentityInfo:
        """``DELETE /gallery/identities/{id}``: returns what was deleted."""
        return _identity_info(self._request("DELETE", self._identity_path(identity_id), idempotent=True))

    def delete_template(self, identity_id: str, template_id: int) -> str:
        """``DELETE /gallery/identities/{id}/templates/{template_id}``: returns the identity id."""
        path = f"{self._identity_path(identity_id)}/templates/{int(template_id)}"
        return str(self._request("DELETE", path, idempotent=True)["identity_id"])


__all__ = ["RETRY_STATUSES", "Client", "error_classes", "error_from_problem"]
