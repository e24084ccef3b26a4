"""Optional dependencies: which ``pip install 'facematch[...]'`` extra brings a missing module.

The one place that maps an importable module to the extra of ``pyproject.toml`` that installs
it, so every "not installed" message gives the same, correct install line.
"""

from __future__ import annotations

from .errors import BackendUnavailableError

# top-level module -> the extra that installs it (see [project.optional-dependencies])
EXTRA_OF_MODULE: dict[str, str] = {
    "onnxruntime": "cpu",
    "faiss": "cpu",
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "multipart": "server",
    "python_multipart": "server",
    "pydantic_settings": "server",
    "prometheus_client": "server",
    "swagger_ui_bundle": "server",
    "pymilvus": "milvus",
    "milvus_lite": "milvus",
    "matplotlib": "eval",
    "tqdm": "eval",
    "torch": "export",
    "onnxconverter_common": "export",
}

# modules no extra installs, with how to get them
OUTSIDE_EXTRAS: dict[str, str] = {
    "tensorrt": "pip install tensorrt (on a machine with an NVIDIA GPU and CUDA)",
}

# extras that come in a CPU and a GPU flavour: pick one
_FLAVOURS = {"cpu": "gpu"}


def install_hint(module: str) -> str:
    """The install line for ``module`` (a top-level or dotted name): ``pip install 'facematch[eval]'``."""
    top = module.split(".", 1)[0]
    if top in OUTSIDE_EXTRAS:
        return OUTSIDE_EXTRAS[top]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return f"install the package that provides {top!r}"
    line = f"pip install 'facematch[{extra}]'"
    if extra in _FLAVOURS:
        line += f" (or 'facematch[{_FLAVOURS[extra]}]' on an NVIDIA GPU)"
    return line


def missing_module(module: str, needed_for: str | None = None) -> BackendUnavailableError:
    """The error for a missing optional module: what needs it and how to install it."""
    top = module.split(".", 1)[0]
    what = f"{needed_for} needs {top}" if needed_for else f"{top} is not installed"
    return BackendUnavailableError(f"{what}: {install_hint(top)}", module=top)


__all__ = ["EXTRA_OF_MODULE", "OUTSIDE_EXTRAS", "install_hint", "missing_module"]
