"""Server settings: ``FACEMATCH_*`` environment variables and an optional env file.

API keys are kept as sha256 hashes only: a key given in plaintext is hashed when the
settings load and the plaintext is dropped. Example::

    FACEMATCH_API_KEYS='[{"name": "ops", "key_sha256": "9f86d0…", "scopes": ["admin"]},
                         {"name": "kiosk", "key": "s3cret", "scopes": ["match"]}]'

An empty (or blank) variable means "not set", for every setting: container setups pass
``FACEMATCH_API_KEYS=`` all the time. A malformed value is a :class:`SettingsError` whose
one-line message names the variable and the expected format, never the value (it may be a key).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

Scope = Literal["match", "enroll", "embed", "explain", "admin"]
SCOPES: tuple[Scope, ...] = ("match", "enroll", "embed", "explain", "admin")
ENV_FILE_VAR = "FACEMATCH_ENV_FILE"
MiB = 1024 * 1024
API_KEYS_FORMAT = (
    'a JSON list of keys, e.g. [{"name": "ops", "key_sha256": "<64 hex digits>", "scopes": ["admin"]}] '
    '(or "key": "<plaintext, at least 8 characters>" instead of "key_sha256"; scopes: match, enroll, embed, admin)'
)


class SettingsError(ValueError):
    """A ``FACEMATCH_*`` setting is malformed; the message names it and the expected format."""


def hash_key(key: str) -> str:
    """Hex sha256 of an API key (what the server stores and compares)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKey(BaseModel):
    """One API key: a name for logs, its sha256 (or the plaintext, hashed at load) and its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=64)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    scopes: tuple[Scope, ...] = ("match",)

    @model_validator(mode="after")
    def _hash_plaintext(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of 'key' or 'key_sha256'")
        if self.key is not None:
            plain = self.key.get_secret_value()
            if len(plain) < 8:
                raise ValueError(f"API key {self.name!r} is shorter than 8 characters")
            object.__setattr__(self, "key_sha256", hash_key(plain))
            object.__setattr__(self, "key", None)
        else:
            object.__setattr__(self, "key_sha256", str(self.key_sha256).lower())
        if not self.scopes:
            raise ValueError(f"API key {self.name!r} has no scopes")
        return self


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the server can be told. Each field is ``FACEMATCH_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="FACEMATCH_",
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,
        env_ignore_empty=True,
    )

    # where to listen (the CLI passes --host/--port here so the key check sees the bind address)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    # models and gallery
    detector: str | None = None
    embedder: str | None = None
    gallery: str | None = None  # a directory, or a postgresql:// URI shared by several replicas
    gallery_read_only: bool = False
    gallery_refresh_s: float = Field(2.0, ge=0.0)  # read-only handles pick up other writers' changes
    # PostgreSQL galleries: catch up with the change log at least this often (the LISTEN/NOTIFY fallback)
    gallery_poll_s: float = Field(1.0, gt=0.0, le=3600.0)
    gallery_listen: bool = True  # false behind a connection pooler in transaction mode (no LISTEN)
    gallery_pool_size: int = Field(10, ge=1, le=1000)  # database connections per replica
    gallery_backend: Literal["faiss", "milvus"] | None = None  # None: the one the gallery was created with
    milvus_uri: str | None = None  # the Milvus server of a PostgreSQL + Milvus gallery
    default_fpir: float = Field(0.01, gt=0.0, lt=1.0)

    # security
    api_keys: list[ApiKey] = Field(default_factory=list)
    metrics_require_auth: bool = False  # when true, /metrics needs the admin scope
    enable_embed: bool = False  # POST /embed returns biometric templates: off unless asked for

    # limits
    max_file_bytes: int = Field(10 * MiB, ge=1024)
    max_request_bytes: int = Field(32 * MiB, ge=1024)
    max_pixels: int = Field(25_000_000, ge=1024)
    max_images_per_request: int = Field(10, ge=1, le=1000)
    max_faces_per_image: int = Field(20, ge=1, le=1000)
    max_k: int = Field(100, ge=1, le=1000)
    explain_max_png_side: int = Field(1024, ge=16, le=8192)  # /explain: longest side of a map PNG in image pixels
    # server-wide bytes of image decodes in flight (each reserves its estimated peak; see docs/server.md)
    max_decode_bytes: int = Field(512 * MiB, ge=16 * MiB)
    body_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)  # a request body must be complete by then (408)
    min_upload_rate: int = Field(4096, ge=0)  # bytes/s on average after the first 5 s (408); 0: no minimum
    # /identify for keys without the enroll scope: candidates below the threshold are shown only
    # at or above this similarity; unset: never (an unknown probe then has no candidates)
    candidate_floor: float | None = Field(None, ge=-1.0, le=1.0)
    max_batch_images: int = Field(64, ge=1, le=10_000)  # distinct images in one POST /verify/batch
    max_batch_pairs: int = Field(2048, ge=1, le=1_000_000)  # pairs in one POST /verify/batch

    # browsers: origins allowed to call the API cross-origin (CORS); empty = CORS off
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    cors_max_age_s: int = Field(600, ge=0, le=86_400)

    # inference scheduling
    batch_max_size: int = Field(32, ge=1, le=1024)
    batch_max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    queue_size: int = Field(64, ge=1, le=100_000)  # requests admitted to inference at once; more get 429
    inference_threads: int = Field(4, ge=1, le=256)  # thread pool for decode/detect/align and embedding
    retry_after_s: int = Field(1, ge=1, le=3600)

    @field_validator("gallery", mode="before")
    @classmethod
    def _gallery_path(cls, value: Any) -> Any:
        """A ``pathlib.Path`` (SDK callers) is a directory path like any other."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("api_keys")
    @classmethod
    def _unique_names(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        return keys

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # blank means unset too (env_ignore_empty drops only ""), in the environment and the env file
        for source in (env_settings, dotenv_settings):
            values = getattr(source, "env_vars", None)
            if isinstance(values, dict):
                source.env_vars = {k: v for k, v in values.items() if v is None or v.strip()}  # type: ignore[attr-defined]
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        """A JSON list or a comma-separated string (``https://a.example,https://b.example``)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [o.strip() for o in text.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        origins = [o.rstrip("/") if o != "*" else o for o in origins]
        for o in origins:
            if o != "*" and not re.fullmatch(r"https?://[^/\s]+", o):
                raise ValueError(f"CORS origin {o!r} must be '*' or scheme://host[:port] (no path)")
        return origins

    @model_validator(mode="after")
    def _cors_credentials(self) -> Settings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError("cors_allow_credentials needs explicit origins, not '*'")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def check_exposure(self) -> None:
        """Refuse a non-loopback bind without API keys (raises ``ValueError``)."""
        if not self.auth_enabled and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys; set FACEMATCH_API_KEYS "
                "(see docs/server.md) or bind to 127.0.0.1"
            )

    @classmethod
    def load(cls, env_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment, an env file (``env_file`` or ``$FACEMATCH_ENV_FILE``) and overrides."""
        env_file = env_file or (os.environ.get(ENV_FILE_VAR) or "").strip() or None
        if env_file is not None and not Path(env_file).is_file():
            raise SettingsError(f"env file {str(env_file)!r} does not exist")
        try:
            return cls(_env_file=env_file, **overrides)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None
        except ValueError as exc:  # pydantic-settings' own parse error (e.g. API_KEYS that is not JSON)
            raise SettingsError(_describe_parse(str(exc))) from None


_FORMATS: dict[str, str] = {
    "api_keys": API_KEYS_FORMAT,
    "host": "a host name or IP address",
    "gallery": "a directory path or a postgresql:// URI",
    "gallery_backend": "faiss or milvus",
    "candidate_floor": "a cosine similarity in [-1, 1]",
    "cors_origins": "a JSON list or comma-separated origins, e.g. https://a.example,https://b.example (or *)",
}


def _expected(field: str) -> str:
    if field in _FORMATS:
        return _FORMATS[field]
    info = Settings.model_fields.get(field)
    kind = getattr(info, "annotation", None)
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    return "a string"


def _describe(exc: ValidationError) -> str:
    """One line per bad setting: the variable, pydantic's reason and the expected format (never the value)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        loc = [str(x) for x in err.get("loc", ())]
        field = loc[0] if loc else "?"
        where = f" (at {'.'.join(loc[1:])})" if len(loc) > 1 else ""
        parts.append(f"FACEMATCH_{field.upper()}{where}: {err.get('msg', 'invalid')}; expected {_expected(field)}")
    return "; ".join(parts) or "invalid settings"


def _describe_parse(message: str) -> str:
    for field in Settings.model_fields:
        if f'"{field}"' in message:
            return f"FACEMATCH_{field.upper()}: cannot be parsed; expected {_expected(field)}"
    return message.splitlines()[0] if message else "invalid settings"


__all__ = [
    "API_KEYS_FORMAT",
    "ENV_FILE_VAR",
    "SCOPES",
    "ApiKey",
    "Scope",
    "Settings",
    "SettingsError",
    "hash_key",
    "is_loopback",
]
