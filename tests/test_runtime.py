"""The ONNX Runtime wrapper: provider choice and thread settings, without model weights."""

from __future__ import annotations

import pytest

from facematch import runtime
from facematch.errors import BackendUnavailableError, InvalidArgumentError
from facematch.runtime import choose_providers, session_options


def test_providers_follow_the_preference_order_of_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEMATCH_PROVIDERS", raising=False)
    installed = ["CPUExecutionProvider", "AzureExecutionProvider", "CUDAExecutionProvider"]
    monkeypatch.setattr(runtime, "available_providers", lambda: list(installed))
    # the preference is TensorRT > CUDA > CPU, whatever order the install lists them in
    assert choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    installed.append("TensorrtExecutionProvider")
    assert choose_providers() == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["cpu"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDA", "cpu"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("FACEMATCH_PROVIDERS", "cpu")
    assert choose_providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv("FACEMATCH_PROVIDERS", "tensorrt,cuda")
    assert choose_providers() == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="not available"):
        choose_providers(["NoSuchExecutionProvider"])
    installed[:] = ["CPUExecutionProvider"]
    monkeypatch.delenv("FACEMATCH_PROVIDERS")
    assert choose_providers() == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        choose_providers(["cuda"])


def test_thread_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEMATCH_THREADS", raising=False)
    assert session_options(3).intra_op_num_threads == 3
    monkeypatch.setenv("FACEMATCH_THREADS", "2")
    assert session_options().intra_op_num_threads == 2
    assert session_options(1).intra_op_num_threads == 1  # an explicit argument wins
    monkeypatch.setenv("FACEMATCH_THREADS", "two")
    with pytest.raises(InvalidArgumentError, match="FACEMATCH_THREADS"):
        session_options()
    with pytest.raises(InvalidArgumentError):
        session_options(-1)


def test_spin_wait_off_sets_the_session_config_entry() -> None:
    from facematch.runtime import session_options

    assert session_options(2, spin_wait=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = session_options(2)
    assert default.intra_op_num_threads == 2
    with pytest.raises(RuntimeError):  # ONNX Runtime raises when an entry was never set
        default.get_session_config_entry("session.intra_op.allow_spinning")
