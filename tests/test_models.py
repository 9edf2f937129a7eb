"""Img2ImgRequest validates every bounded field before anything is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelslab_async import (
    ImageResult,
    Img2ImgRequest,
    InvalidRequestError,
    SafetyCheckerType,
    Scheduler,
)

from ._helpers import IMAGE_URL, make_request


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("width", 1032, "integers 8-1024, multiples of 8"),
        ("width", 513, "integers 8-1024, multiples of 8"),
        ("width", 0, "integers 8-1024, multiples of 8"),
        ("height", 2048, "integers 8-1024, multiples of 8"),
        ("height", 512.0, "integers 8-1024, multiples of 8"),
        ("samples", 0, "integers 1-4"),
        ("samples", 5, "integers 1-4"),
        ("samples", True, "integers 1-4"),
        ("num_inference_steps", 30, "21, 31, 41"),
        ("num_inference_steps", 50, "21, 31, 41"),
        ("guidance_scale", 0.5, "numbers from 1 to 20"),
        ("guidance_scale", 20.5, "numbers from 1 to 20"),
        ("guidance_scale", float("nan"), "numbers from 1 to 20"),
        ("strength", -0.1, "numbers from 0 to 1"),
        ("strength", 1.5, "numbers from 0 to 1"),
        ("strength", "0.5", "numbers from 0 to 1"),
        ("clip_skip", 0, "integers 1-8"),
        ("clip_skip", 9, "integers 1-8"),
        ("scheduler", "FastScheduler", "UniPCMultistepScheduler"),
        ("safety_checker_type", "sepia", "blur, sensitive_content_text, pixelate, black"),
        ("algorithm_type", "dpmsolver++", "dpmsolver+++"),
        ("lora_strength", 1.5, "a number from 0.1 to 1"),
        ("lora_strength", "0.5,2", "a number from 0.1 to 1"),
    ],
)
def test_out_of_range_fields_are_refused_with_the_field_and_what_it_allows(
    field: str, value: Any, allowed: str
) -> None:
    """Each bounded field rejects bad values, naming itself and what is allowed."""
    with pytest.raises(InvalidRequestError) as caught:
        make_request(**{field: value})
    assert field == caught.value.field
    assert allowed in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 1024),
        ("height", 8),
        ("samples", 4),
        ("num_inference_steps", 41),
        ("guidance_scale", 20),
        ("strength", 0),
        ("strength", 1.0),
        ("clip_skip", 8),
        ("seed", 0),
        ("lora_strength", "0.5,1"),
        ("lora_strength", 0.1),
        ("webhook", "https://hooks.example.com/x"),
    ],
)
def test_values_at_the_edges_are_accepted(field: str, value: Any) -> None:
    """Values on the documented bounds are valid."""
    assert value == getattr(make_request(**{field: value}), field)


@pytest.mark.parametrize("field", ["model_id", "prompt"])
@pytest.mark.parametrize("value", ["", "   ", None, 3])
def test_required_text_fields_must_be_non_empty_strings(field: str, value: Any) -> None:
    """model_id and prompt are required non-empty strings."""
    with pytest.raises(InvalidRequestError) as caught:
        make_request(**{field: value})
    assert field == caught.value.field


@pytest.mark.parametrize(
    "flag", ["safety_checker", "enhance_prompt", "tomesd", "use_karras_sigmas", "temp"]
)
def test_flags_are_booleans_not_strings(flag: str) -> None:
    """Flags take True/False in Python; "yes"/"no" is the wire's business."""
    with pytest.raises(InvalidRequestError) as caught:
        make_request(**{flag: "yes"})
    assert flag == caught.value.field
    assert make_request(**{flag: False}).__getattribute__(flag) is False


def test_strings_become_enums() -> None:
    """Scheduler and safety checker type accept their string values."""
    request = make_request(scheduler="DDIMScheduler", safety_checker_type="blur")
    assert Scheduler.DDIM is request.scheduler
    assert SafetyCheckerType.BLUR is request.safety_checker_type
    assert 18 == len(Scheduler)


@pytest.mark.parametrize(
    "value", ["ftp://example.com/a.png", "not a url", "/no/such/file.png", b""]
)
def test_init_image_must_be_a_url_an_existing_file_or_bytes(value: Any) -> None:
    """A bad init_image is refused, naming the three accepted forms."""
    with pytest.raises(InvalidRequestError) as caught:
        make_request(init_image=value)
    assert "init_image" == caught.value.field
    assert "http(s) URL" in str(caught.value)


def test_init_image_local_path_and_bytes(tmp_path: Path) -> None:
    """An existing local path (str or Path) becomes a Path; bytes stay bytes."""
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG fake")
    assert image == make_request(init_image=str(image)).init_image
    assert image == make_request(init_image=image).init_image
    assert b"abc" == make_request(init_image=bytearray(b"abc")).init_image


def test_webhook_must_be_an_http_url() -> None:
    """webhook is validated as a URL."""
    with pytest.raises(InvalidRequestError, match="webhook"):
        make_request(webhook="mailto:someone@example.com")


def test_extra_may_not_shadow_modelled_fields_or_carry_a_key() -> None:
    """extra is for new API fields only: it may not set a key or a modelled field."""
    with pytest.raises(InvalidRequestError) as caught:
        make_request(extra={"key": "sneaky", "width": 512})
    assert "extra" == caught.value.field
    assert "key, width" in str(caught.value)
    assert "sneaky" not in str(caught.value)
    assert {"ip_adapter_id": "ip-adapter_sd15"} == dict(
        make_request(extra={"ip_adapter_id": "ip-adapter_sd15"}).extra
    )


def test_requests_are_frozen_and_keyword_only() -> None:
    """Requests are immutable values built with keywords."""
    request = make_request()
    with pytest.raises(AttributeError):
        request.prompt = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Img2ImgRequest("m", "p", IMAGE_URL)  # type: ignore[misc]


def test_repr_does_not_dump_image_bytes() -> None:
    """A request built from bytes shows their size, not their content."""
    assert "<5 bytes>" in repr(make_request(init_image=b"12345"))


def test_image_result_meta_is_read_only() -> None:
    """Results are immutable, their meta included."""
    result = ImageResult(id="1", output=("u",), meta={"seed": 1})
    with pytest.raises(TypeError):
        result.meta["seed"] = 2  # type: ignore[index]
