"""Reading images from requests: multipart file parts or base64 in JSON, under the byte limits.

URL inputs are not supported at all (the server never fetches anything): a JSON image
that looks like a URL is refused with ``url_input_disabled``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from .errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    TooManyImagesError,
    UnsupportedContentTypeError,
    UrlInputDisabledError,
    validation_errors,
)
from .settings import Settings

if TYPE_CHECKING:
    from starlette.requests import Request

P = TypeVar("P", bound=BaseModel)

_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class FileField:
    """A file part of a multipart body (a base64 string, or list of them, in JSON)."""

    name: str
    multiple: bool = False
    required: bool = True
    description: str = "image file (JPEG, PNG, WebP, BMP or TIFF)"


@dataclass
class ParsedRequest(Generic[P]):
    params: P
    images: dict[str, list[bytes]]
    names: dict[str, list[str]]  # file names (multipart) or "#i" (JSON), for reports

    def one(self, name: str) -> bytes:
        return self.images[name][0]


_WHITESPACE = {ord(c): None for c in " \t\r\n\v\f"}


def decode_base64(value: str, where: str, max_bytes: int) -> bytes:
    """Bytes of a base64 (or data-URL) image string; refuses URLs, bad base64 and oversize data.

    Whitespace inside is ignored, so MIME-style base64 broken into lines (RFC 2045, Python's
    ``base64.encodebytes``) is accepted; any other character outside the alphabet is refused.
    """
    text = value.strip()
    if text.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise UrlInputDisabledError(f"{where}: URL inputs are disabled; send the image bytes (base64 or multipart)")
    text = _DATA_URL.sub("", text, count=1)
    limit = (max_bytes * 4) // 3 + 8
    if len(text) > 2 * limit:  # cheap bound before stripping (line breaks add ~3 %)
        raise PayloadTooLargeError(f"{where}: the image is larger than {max_bytes} bytes", limit=max_bytes)
    text = text.translate(_WHITESPACE)
    if len(text) > limit:
        raise PayloadTooLargeError(f"{where}: the image is larger than {max_bytes} bytes", limit=max_bytes)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # URL-safe alphabet
            data = base64.b64decode(text, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequestError(f"{where}: not valid base64") from exc
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"{where}: the image is larger than {max_bytes} bytes", limit=max_bytes)
    return data


def _validate(model: type[P], data: Any, *, json: bool, settings: Settings | None = None) -> P:
    context = {"max_k": settings.max_k} if settings is not None else None  # limits checked against the settings
    try:
        if json:
            return model.model_validate_json(data, context=context)
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidRequestError(
            "the request does not match the schema", errors=validation_errors(exc.errors(include_input=False))
        ) from exc


async def parse_images_request(
    request: Request,
    settings: Settings,
    files: tuple[FileField, ...],
    form_model: type[BaseModel],
    json_model: type[BaseModel],
    *,
    max_images: int | None = None,
) -> ParsedRequest[Any]:
    """Parse a multipart or JSON request carrying images and options, enforcing every limit.

    ``max_images`` replaces ``settings.max_images_per_request`` (e.g. for batch verification).
    """
    limit = settings.max_images_per_request if max_images is None else max_images
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _parse_multipart(request, settings, files, form_model, limit)
    if ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json")):
        body = await request.body()
        if not body:
            raise InvalidRequestError("empty JSON body")
        parsed = _validate(json_model, body, json=True, settings=settings)
        images: dict[str, list[bytes]] = {}
        names: dict[str, list[str]] = {}
        total = 0
        for f in files:
            raw = getattr(parsed, f.name, None)
            values = [] if raw is None else (list(raw) if isinstance(raw, list) else [raw])
            total += len(values)
            if total > limit:
                raise TooManyImagesError(f"more than {limit} images in one request")
            images[f.name] = [
                decode_base64(v, f"{f.name}[{i}]" if f.multiple else f.name, settings.max_file_bytes)
                for i, v in enumerate(values)
            ]
            names[f.name] = [f"#{i}" for i in range(len(values))]
        return ParsedRequest(params=parsed, images=images, names=names)  # the JSON model has the same options
    raise UnsupportedContentTypeError(
        f"unsupported content type {ctype or '(none)'!r}; send multipart/form-data or application/json"
    )


async def parse_json_request(request: Request, model: type[P]) -> P:
    """A JSON-only body validated against ``model`` (415 for another content type, 422 ``invalid_request``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
        raise UnsupportedContentTypeError(f"unsupported content type {ctype or '(none)'!r}; send application/json")
    body = await request.body()
    if not body:
        raise InvalidRequestError("empty JSON body")
    return _validate(model, body, json=True)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON-only request body of ``model`` (with its first example)."""
    schema = _inline(model.model_json_schema())
    examples = schema.pop("examples", None)
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["example"] = examples[0]
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


_NOT_TEXT = "text field"


class _StrictTextMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, except that a text field that is not valid in its charset is
    refused (starlette falls back to latin-1: the bytes ``\\xff\\xfe\\xfd`` would become the id ``"ÿþý"``)."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        charset = self._charset or "utf-8"
        try:
            text = bytes(part.data).decode(charset)
        except (UnicodeDecodeError, LookupError):
            raise MultiPartException(f"{_NOT_TEXT} {part.field_name!r} is not valid {charset} text") from None
        self.items.append((part.field_name, text))


async def _parse_multipart(
    request: Request, settings: Settings, files: tuple[FileField, ...], form_model: type[BaseModel], limit: int
) -> ParsedRequest[Any]:
    from starlette.datastructures import UploadFile

    try:
        async with aclosing(request.stream()) as stream:
            parser = _StrictTextMultiPartParser(
                request.headers, stream, max_files=limit + 4, max_fields=64, max_part_size=1024 * 1024
            )
            form = await parser.parse()
    except MultiPartException as exc:
        text = str(exc.message)
        if "Too many files" in text:
            raise TooManyImagesError(f"more than {limit} images in one request") from None
        if "exceeded maximum size" in text:  # a text field over max_part_size (files are spooled, not capped)
            raise PayloadTooLargeError(f"a multipart text field is too large: {text}", limit=1024 * 1024) from None
        if text.startswith(_NOT_TEXT):
            raise InvalidRequestError(text) from None
        raise InvalidRequestError(f"malformed multipart body: {text}") from None
    try:
        file_names = {f.name for f in files}
        images: dict[str, list[bytes]] = {}
        names: dict[str, list[str]] = {}
        total = 0
        for f in files:
            parts = form.getlist(f.name)
            if not parts and f.required:
                raise InvalidRequestError(
                    f"missing file part {f.name!r}",
                    errors=[{"loc": ["body", f.name], "msg": "Field required", "type": "missing"}],
                )
            if len(parts) > 1 and not f.multiple:
                raise InvalidRequestError(f"send exactly one file part {f.name!r}")
            total += len(parts)
            if total > limit:
                raise TooManyImagesError(f"more than {limit} images in one request")
            blobs: list[bytes] = []
            labels: list[str] = []
            for i, part in enumerate(parts):
                if not isinstance(part, UploadFile):
                    raise InvalidRequestError(f"{f.name!r} must be a file part, not a text field")
                if part.size is not None and part.size > settings.max_file_bytes:
                    raise PayloadTooLargeError(
                        f"{f.name!r} is larger than {settings.max_file_bytes} bytes", limit=settings.max_file_bytes
                    )
                data = await part.read(settings.max_file_bytes + 1)
                if len(data) > settings.max_file_bytes:
                    raise PayloadTooLargeError(
                        f"{f.name!r} is larger than {settings.max_file_bytes} bytes", limit=settings.max_file_bytes
                    )
                blobs.append(data)
                labels.append(part.filename or f"#{i}")
            images[f.name] = blobs
            names[f.name] = labels
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key in file_names:
                continue
            if isinstance(value, UploadFile):
                raise InvalidRequestError(f"{key!r} must be a text field, not a file part")
            fields[key] = value
        params = _validate(form_model, fields, json=False, settings=settings)
        return ParsedRequest(params=params, images=images, names=names)
    finally:
        await form.close()


# ---- OpenAPI ------------------------------------------------------------------------------------
def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model schema with its ``$defs`` inlined (request bodies are declared by hand)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.split("/")[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


def request_body(
    files: tuple[FileField, ...],
    form_model: type[BaseModel],
    json_model: type[BaseModel],
    *,
    form_example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` declaring both request bodies (multipart and JSON) of an image endpoint.

    The multipart example is ``form_example``, else the JSON example with each file part shown
    as a file name (what ``curl -F image=@probe.jpg`` sends) and the other members as text fields.
    """
    form = _inline(form_model.model_json_schema())
    binary = {"type": "string", "format": "binary"}
    props: dict[str, Any] = {}
    required = []
    for f in files:
        props[f.name] = (
            {"type": "array", "items": binary, "minItems": 1, "description": f.description}
            if f.multiple
            else {**binary, "description": f.description}
        )
        if f.required:
            required.append(f.name)
    props.update(form.get("properties", {}))
    required += form.get("required", [])
    multipart = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    js = _inline(json_model.model_json_schema())
    examples = js.pop("examples", None)
    json_media: dict[str, Any] = {"schema": js}
    if examples:
        json_media["example"] = examples[0]
    encoding = {f.name: {"contentType": "image/*, application/octet-stream"} for f in files}
    multipart_media: dict[str, Any] = {"schema": multipart, "encoding": encoding}
    example = form_example if form_example is not None else _form_example(files, json_media.get("example"))
    if example:
        multipart_media["example"] = example
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": multipart_media,
                "application/json": json_media,
            },
        }
    }


def _form_example(files: tuple[FileField, ...], json_example: Any) -> dict[str, Any] | None:
    """A multipart example from the JSON one: file parts as file names, objects as JSON text fields."""
    if not isinstance(json_example, dict):
        return None
    out: dict[str, Any] = {}
    names = {f.name: f for f in files}
    for key, value in json_example.items():
        f = names.get(key)
        if f is not None:
            count = len(value) if isinstance(value, list) else 1
            stem = "face" if f.multiple else key
            out[key] = [f"{stem}{i + 1}.jpg" for i in range(count)] if f.multiple else f"{stem}.jpg"
        elif isinstance(value, (dict, list)):
            out[key] = json.dumps(value)
        else:
            out[key] = value
    return out


__all__ = [
    "FileField",
    "ParsedRequest",
    "decode_base64",
    "json_body",
    "parse_images_request",
    "parse_json_request",
    "request_body",
]
