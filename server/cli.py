"""``facematch serve``: run the REST server under uvicorn (light module: uvicorn loads in the command).

Errors (bad settings, a missing ``[server]`` extra) are reported in the command line's one style.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from facematch._cliutil import run_command
from facematch.errors import InvalidArgumentError


def serve(
    host: Annotated[str, typer.Option(help="Bind address. Anything but loopback needs API keys.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8000,
    gallery: Annotated[
        str | None,
        typer.Option(
            help="Gallery directory to serve (created when absent), or a postgresql:// URI shared by several "
            "replicas. None: no gallery routes."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes (>1 needs a read-only or a PostgreSQL gallery).", min=1)
    ] = 1,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="File of FACEMATCH_* settings (dotenv format).")
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Open the gallery read-only (writes answer 409).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve /verify, /identify, /detect, the gallery routes and /healthz, /readyz, /metrics."""
    overrides = {"FACEMATCH_HOST": host, "FACEMATCH_PORT": str(port)}
    if gallery is not None:
        overrides["FACEMATCH_GALLERY"] = gallery
    if read_only:
        overrides["FACEMATCH_GALLERY_READ_ONLY"] = "true"
    if env_file is not None:
        overrides["FACEMATCH_ENV_FILE"] = str(env_file)
    os.environ.update(overrides)  # the app factory (in each worker) reads its settings from here

    from .settings import Settings

    try:
        settings = Settings.load()
        settings.check_exposure()
    except ValueError as exc:  # SettingsError: one line naming the variable and its format, never the value
        raise InvalidArgumentError(f"invalid settings: {exc}") from None
    from facematch.gallery.postgres_store import is_postgres_uri

    shared = is_postgres_uri(settings.gallery)  # every worker is a replica of a PostgreSQL gallery
    if workers > 1 and settings.gallery is not None and not settings.gallery_read_only and not shared:
        raise InvalidArgumentError(
            "a gallery directory has one writer; use --workers 1, --read-only, or a PostgreSQL gallery"
        )

    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)  # facematch's own logs go out beside uvicorn's
    log_config["loggers"]["facematch"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    uvicorn.run(
        "facematch.server.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=log_level,
        log_config=log_config,
        server_header=False,
        timeout_graceful_shutdown=30,
    )


def main() -> None:
    """Standalone entry point (``python -m facematch.server``), with the command line's error style."""
    run_command(serve, "serve")


__all__ = ["main", "serve"]
