"""Every response variant the fake can draw (``--variants SEED``) is parsed by the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from modelslab_async import APIError, Client, Endpoints, Img2ImgRequest, RetryPolicy, ServerPool
from modelslab_async.testing import FakeModelsLab, FakeServerSpec
from modelslab_async.testing._variants import VARIANTS

from ._helpers import FAST_HEALTH, FAST_POLL
from .contract.strict import strict_admin, strict_parse

KEY = "sk-contract-variants-key"
JOBS = 40
SEED = 11


def _request(n: int, model_id: str = "realistic-vision-51") -> Img2ImgRequest:
    return Img2ImgRequest(model_id=model_id, prompt=f"fox {n}", init_image="https://e.com/f.png")


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelsLab]:
    """A fake drawing variants, answering about half the jobs 'processing'."""
    spec = FakeServerSpec("server-1", KEY, slots=4, service_time=0.02, service_jitter=1.0)
    async with FakeModelsLab([spec], processing_threshold=0.02, variants=SEED, seed=3) as server:
        yield server


async def _raw_answers(fake: FakeModelsLab) -> list[tuple[str, int, Any]]:
    """Submit, fetch and ask the server endpoints directly; return every answer."""
    answers: list[tuple[str, int, Any]] = []
    base = fake.base_url
    async with aiohttp.ClientSession() as http:

        async def post(kind: str, path: str, body: dict[str, Any]) -> Any:
            async with http.post(f"{base}/{path}", json={"key": KEY, **body}) as answer:
                decoded = await answer.json(content_type=None)
                answers.append((kind, answer.status, decoded))
                return decoded

        for n in range(JOBS):
            body = {"model_id": "sdxl", "prompt": "p", "init_image": "https://e.com/a.png"}
            submitted = await post("answer", "img2img", body)
            if submitted.get("id") is not None:
                await post("answer", "fetch", {"request_id": submitted["id"]})
            await post("answer", "img2img", {**body, "samples": 9})
            await post("answer", "img2img", {**body, "model_id": f"missing-{n}"})
            await post("answer", "fetch", {"request_id": 1})
            await post("schedulers_list", "schedulers_list", {})
    return answers


async def test_every_variant_is_drawn_and_parsed(fake: FakeModelsLab) -> None:
    """Every value of every variant axis comes out, and each answer parses strictly."""
    answers = await _raw_answers(fake)
    for kind, status, body in answers:
        if kind == "answer":
            strict_parse(body, status_code=status)
        else:
            strict_admin(kind, body)
    drawn = {variant for record in fake.received for variant in record.variants}
    expected = {f"{axis}={value}" for axis, values in VARIANTS.items() for value in values}
    assert expected == drawn


async def test_the_client_reads_every_variant_through(fake: FakeModelsLab) -> None:
    """Jobs succeed and request errors stay APIError whatever shape each answer takes."""
    pool = ServerPool([KEY], health=FAST_HEALTH)
    retry = RetryPolicy.no_wait()
    async with Client(pool, base_url=fake.base_url, retry=retry, poll=FAST_POLL) as client:
        results = [await client.img2img(_request(n)) for n in range(JOBS // 2)]
        errors = []
        for n in range(10):
            with pytest.raises(APIError) as caught:
                await client.img2img(_request(n, model_id="nope"))
            errors.append(caught.value)
    async with Client(
        ServerPool([KEY], health=FAST_HEALTH),
        base_url=fake.base_url,
        retry=retry,
        poll=FAST_POLL,
        endpoints=Endpoints.sdk(),
    ) as client:
        results += [await client.img2img(_request(n)) for n in range(JOBS // 2)]
    assert all(len(result.output) == 1 for result in results)
    assert all(result.output[0].startswith(fake.root_url) for result in results)
    assert all("Model not found: nope" in str(error) for error in errors)
    assert {200, 400} == {error.status_code for error in errors}
    drawn = {variant for record in fake.received for variant in record.variants}
    for variant in ("id_type=str", "processing_output=empty_string", "message_key=message"):
        assert variant in drawn
    assert {"error_http=200", "error_http=400"} <= drawn
    assert {"fetch_result=v6_other_id", "processing_form=quickstart"} <= drawn


async def test_the_same_seed_draws_the_same_variants() -> None:
    """Two fakes with the same variants seed answer the same requests in the same shapes."""
    shapes = []
    for _ in range(2):
        spec = FakeServerSpec("server-1", KEY, slots=4, service_time=0.02, service_jitter=1.0)
        async with FakeModelsLab([spec], processing_threshold=0.02, variants=5, seed=3) as fake:
            await _raw_answers_small(fake)
            shapes.append([record.variants for record in fake.received])
    assert shapes[0] == shapes[1]
    assert any(shapes[0])


async def _raw_answers_small(fake: FakeModelsLab) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("schedulers_list", "img2img", "fetch", "img2img"):
            body = {"key": KEY, "model_id": "x", "prompt": "p", "init_image": "https://e.com/a.png"}
            async with http.post(f"{fake.base_url}/{path}", json=body) as answer:
                await answer.read()
