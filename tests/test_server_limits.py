"""Server hardening parts in-process (issue 12): the decode budget, settings from a container's
environment, access-log scrubbing, the identify view of a match-only key, MIME base64."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys

import pytest
from facematch.server.access_log import ScrubCredentials, scrub_url
from facematch.server.batcher import DecodeBudget
from facematch.server.inputs import decode_base64
from facematch.server.schemas import FaceIdentification
from facematch.server.settings import Settings, SettingsError

from facematch.errors import ImageTooLargeError
from facematch.types import Candidate, IdentifyResult


# ---- the decode budget ------------------------------------------------------------------------
def test_decode_budget_is_fifo_and_bounded() -> None:
    async def main() -> None:
        budget = DecodeBudget(100)
        order: list[str] = []
        big = await budget.reserve(70)
        assert budget.used == 70

        async def take(name: str, n: int, hold: float) -> None:
            async with await budget.reserve(n):
                order.append(name)
                assert budget.used <= budget.capacity
                await asyncio.sleep(hold)

        tasks = [asyncio.create_task(take("a", 50, 0.01)), asyncio.create_task(take("b", 10, 0.01))]
        await asyncio.sleep(0.01)
        assert order == [] and budget.waiting == 2  # b (10) would fit, but waits behind a (50): no starvation
        big.release()  # a, then b, are granted in order
        assert budget.used == 50 + 10 and budget.waiting == 0
        big.release()  # twice is harmless
        assert budget.used == 60
        await asyncio.gather(*tasks)
        assert order == ["a", "b"] and budget.used == 0
        with pytest.raises(ImageTooLargeError):  # more than the whole budget: refused at once
            await budget.reserve(101)

    asyncio.run(main())


def test_decode_budget_survives_cancelled_waiters() -> None:
    async def main() -> None:
        budget = DecodeBudget(100)
        held = await budget.reserve(100)
        waiter = asyncio.create_task(budget.reserve(60))
        await asyncio.sleep(0)
        waiter.cancel()  # the client went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await waiter
        held.release()
        assert budget.used == 0
        again = await asyncio.wait_for(budget.reserve(100), 1.0)  # nothing left stuck in the queue
        again.release()
        granted = await budget.reserve(100)
        late = asyncio.create_task(budget.reserve(1))
        await asyncio.sleep(0)
        granted.release()  # grants `late`...
        late.cancel()  # ...which is cancelled before it resumes: its byte is given back
        with pytest.raises(asyncio.CancelledError):
            await late
        assert budget.used == 0

    asyncio.run(main())


# ---- settings -------------------------------------------------------------------------------------
def test_blank_environment_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEYS", "MAX_K", "PORT", "GALLERY", "DEFAULT_FPIR", "ENABLE_EMBED", "CANDIDATE_FLOOR"):
        monkeypatch.setenv(f"FACEMATCH_{name}", " " if name == "API_KEYS" else "")
    s = Settings.load()
    assert s.api_keys == [] and s.max_k == 100 and s.port == 8000 and s.gallery is None
    assert s.default_fpir == 0.01 and s.enable_embed is False and s.candidate_floor is None


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("API_KEYS", "not json", "JSON list of keys"),
        ("API_KEYS", '{"name": "ops"}', "JSON list of keys"),
        ("API_KEYS", '[{"name": "ops", "key": "s3cret-value-1", "scopes": ["root"]}]', "scopes: match, enroll"),
        ("API_KEYS", '[{"name": "ops", "key": "s3cr"}]', "shorter than 8"),
        ("MAX_K", "lots", "expected an integer"),
        ("ENABLE_EMBED", "perhaps", "expected true or false"),
        ("MAX_DECODE_BYTES", "1", "expected an integer"),
    ],
)
def test_malformed_settings_say_the_format_never_the_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(f"FACEMATCH_{name}", value)
    with pytest.raises(SettingsError) as err:
        Settings.load()
    text = str(err.value)
    assert f"FACEMATCH_{name}" in text and expected in text and "\n" not in text, text
    assert "s3cr" not in text  # a key is never echoed


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "uvicorn", "--factory", "facematch.server.app:create_app", "--port", "0"],
        ["-m", "facematch.server", "--port", "0"],
    ],
)
def test_start_up_with_malformed_settings_is_one_line(command: list[str]) -> None:
    env = {"PATH": "/usr/bin:/bin", "FACEMATCH_API_KEYS": '[{"name": "a", "key": "hunter2-hunter2", "scopes": []}]'}
    proc = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "FACEMATCH_API_KEYS" in err and "JSON list of keys" in err and "hunter2" not in err, err


# ---- access logs ----------------------------------------------------------------------------------
def test_credentials_are_scrubbed_from_access_logs() -> None:
    assert scrub_url("/verify?api_key=abc&k=3") == "/verify?api_key=***&k=3"
    assert scrub_url("/x?token=t&access_token=a&apiKey=b&key=c&password=p&k=1") == (
        "/x?token=***&access_token=***&apiKey=***&key=***&password=***&k=1"
    )
    assert scrub_url("/gallery/identities?cursor=abc&limit=5") == "/gallery/identities?cursor=abc&limit=5"
    assert scrub_url("/healthz") == "/healthz"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/verify?api_key=sekrit", "1.1", 401), None,
    )  # fmt: skip
    assert ScrubCredentials().filter(record) and "sekrit" not in record.getMessage()
    assert "/verify?api_key=*** HTTP/1.1" in record.getMessage()


# ---- identify for a match-only key ------------------------------------------------------------------
def test_identify_view_of_a_key_without_gallery_read() -> None:
    cands = tuple(Candidate(f"id{i}", s, 1e-3, i + 1, {"team": "red"}) for i, s in enumerate((0.62, 0.41, 0.30, 0.12)))
    known = IdentifyResult(cands, 0.4, False)
    unknown = IdentifyResult(cands[2:], 0.4, True)
    full = FaceIdentification.of(known)
    assert [c.identity_id for c in full.candidates] == ["id0", "id1", "id2", "id3"]
    assert full.candidates[0].metadata == {"team": "red"}
    narrow = FaceIdentification.of(known, full=False)  # at or above the threshold only, no metadata
    assert [c.identity_id for c in narrow.candidates] == ["id0", "id1"]
    assert all(c.metadata is None for c in narrow.candidates)
    assert FaceIdentification.of(unknown, full=False).candidates == []  # an unknown probe: nothing by default
    floored = FaceIdentification.of(unknown, full=False, floor=0.2)
    assert [c.identity_id for c in floored.candidates] == ["id2"]
    assert FaceIdentification.of(unknown, full=True, floor=0.9).candidates[0].metadata == {"team": "red"}


# ---- inputs ---------------------------------------------------------------------------------------
def test_mime_base64_with_line_breaks_is_accepted() -> None:
    data = bytes(range(256)) * 40
    assert decode_base64(base64.encodebytes(data).decode(), "image", 1 << 20) == data  # 76-column lines
    assert decode_base64(base64.b64encode(data).decode().replace("A", "A\r\n", 5), "image", 1 << 20) == data
    from facematch.server.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        decode_base64(base64.encodebytes(data).decode() + "*", "image", 1 << 20)  # still not any garbage
