"""The docs' own examples, replayed against the fake and parsed by the client (no unknown keys).

Every entry of ``tests/contract/docs_examples.json`` names its section in
``../shared/spec/modelslab-api.md``. The documented answer must parse; the fake, set up as the
entry says, must answer the same request with the same HTTP status, the documented keys and
nothing undocumented, in a way the client parses the same.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault
from modelslab_async.testing._variants import AnswerKind, Variants

from .contract.strict import strict_admin, strict_parse

FIXTURES = Path(__file__).parent / "contract" / "docs_examples.json"
EXAMPLES: list[dict[str, Any]] = json.loads(FIXTURES.read_text())["examples"]
KEY = "sk-contract-docs-key"
ANSWERS = {"img2img", "fetch"}
SDK_PATHS = {"update_server": "images/update"}


def _variant_seed(kind: AnswerKind, wanted: dict[str, str]) -> int:
    """The first seed whose first draw for ``kind`` gives the wanted variant values."""
    for seed in range(1000):
        drawn = Variants(seed).draw(kind)
        if all(drawn[axis] == value for axis, value in wanted.items()):
            return seed
    raise AssertionError(f"no seed draws {wanted}")


def _fake(setup: dict[str, Any]) -> FakeModelsLab:
    spec = FakeServerSpec(
        "server-1",
        KEY,
        slots=1,
        service_time=0.05 if "fill_queue" not in setup else 1.0,
        **({"models": tuple(setup["models"])} if "models" in setup else {}),
    )
    variants = None
    if "variant" in setup:
        kind: AnswerKind = "schedulers" if "schedulers" in setup["variant"] else "processing"
        variants = _variant_seed(kind, setup["variant"])
    fake = FakeModelsLab(
        [spec],
        processing_threshold=setup.get("processing_threshold", 1.0),
        queue_limit=setup.get("queue_limit"),
        balance=setup.get("balance"),
        variants=variants,
        seed=1,
    )
    if "fault" in setup:
        fake.add_fault(Fault(**setup["fault"]))
    return fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as answer:
        return answer.status, await answer.json(content_type=None)


async def _replay(
    http: aiohttp.ClientSession, fake: FakeModelsLab, example: dict[str, Any], path: str
) -> tuple[int, Any]:
    setup = example["setup"]
    body = {"key": KEY, **example["request"]}
    base = fake.base_url
    for _ in range(setup.get("fill_queue", 0)):
        status, answer = await _post(http, f"{base}/img2img", body)
        assert (200, "processing") == (status, answer["status"])
    if example["endpoint"] == "fetch":
        status, submitted = await _post(http, f"{base}/img2img", body)
        assert (200, "success") == (status, submitted["status"])
        return await _post(http, f"{base}/fetch", {"key": KEY, "request_id": submitted["id"]})
    return await _post(http, f"{base}/{path}", body)


def _check_match(example: dict[str, Any], answer: dict[str, Any]) -> None:
    documented = example["response"]
    match = example["match"]
    assert documented.get("status") == answer.get("status")
    if match == "body":
        assert documented == answer
    elif match == "keys":
        assert set(documented) <= set(answer)
    elif match in ("message", "message_prefix"):
        said = documented.get("message", documented.get("messege"))
        got = answer.get("message", answer.get("messege"))
        if match == "message":
            assert said == got
        else:
            assert got.startswith(said.rstrip("."))


def _paths(example: dict[str, Any]) -> list[str]:
    endpoint = example["endpoint"]
    if endpoint in ANSWERS:
        return [endpoint]
    return [endpoint, SDK_PATHS.get(endpoint, f"images/{endpoint}")]


CASES = [
    pytest.param(example, path, id=f"{example['name']} [{path}]")
    for example in EXAMPLES
    for path in _paths(example)
]


def test_every_example_names_its_source() -> None:
    """Each example cites a section of the spec file, which exists."""
    spec = Path(__file__).resolve().parent.parent.parent / "shared" / "spec" / "modelslab-api.md"
    for example in EXAMPLES:
        assert example["source"].startswith("../shared/spec/modelslab-api.md §")
    if spec.exists():
        text = spec.read_text()
        for example in EXAMPLES:
            section = example["source"].split("'")[1] if "'" in example["source"] else None
            if section is not None:
                assert section.split(",")[0].split(" (")[0] in text, example["name"]


@pytest.mark.parametrize(("example", "path"), CASES)
async def test_docs_example_replayed_against_the_fake(
    http: aiohttp.ClientSession, example: dict[str, Any], path: str
) -> None:
    """The docs' answer parses strictly; the fake answers the docs' request the same way."""
    endpoint = example["endpoint"]
    documented = example["response"]
    async with _fake(example["setup"]) as fake:
        status, answer = await _replay(http, fake, example, path)
    assert example["http_status"] == status, answer
    _check_match(example, answer)
    if endpoint not in ANSWERS:
        strict_admin(endpoint, documented)
        strict_admin(endpoint, answer)
        return
    expected = strict_parse(documented, status_code=example["http_status"])
    parsed = strict_parse(answer, status_code=status)
    assert (expected.status, expected.id is None) == (parsed.status, parsed.id is None)
    assert bool(expected.output) == bool(parsed.output)
    assert (expected.retry_after is None) == (parsed.retry_after is None)
