"""The wire format lives in one converter: requests out, manifest lines in, answers parsed."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from modelslab_async import (
    InvalidRequestError,
    ResponseFormatError,
    request_from_wire,
    request_to_wire,
)
from modelslab_async._converter import ApiResponse, converter, parse_response

from ._helpers import IMAGE_URL, make_request


def test_flags_go_out_as_yes_no_and_none_fields_are_omitted() -> None:
    """Booleans become "yes"/"no", enums their values, and unset fields are not sent."""
    body = request_to_wire(
        make_request(safety_checker=False, tomesd=True, scheduler="DDIMScheduler", width=512)
    )
    assert {
        "model_id": "realistic-vision-51",
        "prompt": "a cat",
        "init_image": IMAGE_URL,
        "safety_checker": "no",
        "tomesd": "yes",
        "scheduler": "DDIMScheduler",
        "width": 512,
    } == body
    assert "key" not in body


def test_bytes_and_local_files_go_out_base64_encoded(tmp_path: Path) -> None:
    """A local image is sent as base64 with base64: "yes", as the docs allow."""
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNGdata")
    for source in (b"\x89PNGdata", image):
        body = request_to_wire(make_request(init_image=source))
        assert "yes" == body["base64"]
        assert b"\x89PNGdata" == base64.b64decode(body["init_image"])


def test_extra_fields_are_sent_verbatim() -> None:
    """Fields the model does not know yet travel through extra."""
    body = request_to_wire(make_request(extra={"ip_adapter_scale": 0.6}))
    assert 0.6 == body["ip_adapter_scale"]


def test_converter_unstructures_requests_the_same_way() -> None:
    """The cattrs converter is the same path as request_to_wire."""
    request = make_request(samples=2)
    assert request_to_wire(request) == converter.unstructure(request)


def test_manifest_lines_in_wire_names_become_requests() -> None:
    """Strings for numbers and "yes"/"no" for flags are accepted from wire-shaped input."""
    request = request_from_wire(
        {
            "model_id": "m",
            "prompt": "p",
            "init_image": IMAGE_URL,
            "samples": "2",
            "width": "512",
            "guidance_scale": "7.5",
            "safety_checker": "no",
            "enhance_prompt": True,
            "seed": None,
            "ip_adapter_id": "ip-adapter_sd15",
        }
    )
    assert (2, 512, 7.5, False, True, None) == (
        request.samples,
        request.width,
        request.guidance_scale,
        request.safety_checker,
        request.enhance_prompt,
        request.seed,
    )
    assert {"ip_adapter_id": "ip-adapter_sd15"} == dict(request.extra)
    assert request == converter.structure(request_to_wire(request), type(request))


def test_manifest_base64_images_are_decoded() -> None:
    """With base64 "yes", init_image is decoded to bytes."""
    encoded = base64.b64encode(b"img").decode()
    request = request_from_wire(
        {"model_id": "m", "prompt": "p", "init_image": encoded, "base64": "yes"}
    )
    assert b"img" == request.init_image


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "p", "init_image": IMAGE_URL}, "model_id"),
        ({"model_id": "m", "prompt": "p", "init_image": IMAGE_URL, "key": "k"}, "key"),
        ({"model_id": "m", "prompt": "p", "init_image": IMAGE_URL, "tomesd": "maybe"}, "tomesd"),
        ({"model_id": "m", "prompt": "p", "init_image": IMAGE_URL, "samples": "many"}, "samples"),
        ({"model_id": "m", "prompt": "p", "init_image": "%%%", "base64": "yes"}, "init_image"),
    ],
)
def test_bad_manifest_lines_name_the_field(body: dict[str, Any], field: str) -> None:
    """Wire-shaped input is validated like any request."""
    with pytest.raises(InvalidRequestError) as caught:
        request_from_wire(body)
    assert field == caught.value.field


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"status": "success", "id": 13443927, "output": ["u1"], "generationTime": 4.02},
            ApiResponse(status="success", id="13443927", output=("u1",), generation_time=4.02),
        ),
        (
            {
                "status": "processing",
                "id": "abc123-def456",
                "eta": 15,
                "message": "Your request is being processed",
            },
            ApiResponse(
                status="processing",
                id="abc123-def456",
                eta=15.0,
                message="Your request is being processed",
            ),
        ),
        (
            {"status": "processing", "messege": "try again later.", "output": "", "tip": "x"},
            ApiResponse(status="processing", message="try again later."),
        ),
        (
            {"status": "success", "output": "https://x/one.png", "proxy_links": "", "id": 7.0},
            ApiResponse(status="success", output=("https://x/one.png",), id="7"),
        ),
        (
            {
                "status": "processing",
                "id": 1,
                "eta": "2.75",
                "output": [],
                "future_links": ["f"],
                "fetch_result": "https://x/fetch/1",
            },
            ApiResponse(
                status="processing",
                id="1",
                eta=2.75,
                future_links=("f",),
                fetch_result="https://x/fetch/1",
            ),
        ),
        (
            {"status": "Error", "messege": "Model not found: x", "retry_after": 30},
            ApiResponse(status="error", message="Model not found: x", retry_after=30.0),
        ),
        (
            {
                "status": "success",
                "output": ["u"],
                "nsfw_content_detected": [False, True],
                "meta": {"seed": 1},
            },
            ApiResponse(
                status="success", output=("u",), nsfw_content_detected=True, meta={"seed": 1}
            ),
        ),
        (
            {"status": "success", "output": ["u", 3, None], "eta": "soon", "meta": "x"},
            ApiResponse(status="success", output=("u",)),
        ),
    ],
)
def test_answers_are_parsed_tolerantly(body: dict[str, Any], expected: ApiResponse) -> None:
    """Every documented response shape parses, whatever the types the server chose."""
    assert expected == parse_response(body)


@pytest.mark.parametrize("body", [[], "text", {"output": []}, {"status": ""}])
def test_answers_without_a_status_are_format_errors(body: Any) -> None:
    """A body that is not an object with a status is a ResponseFormatError."""
    with pytest.raises(ResponseFormatError):
        parse_response(body)
