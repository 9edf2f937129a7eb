"""The fake's request rules and `Img2ImgRequest`'s agree, field by field (spec section 1)."""

from __future__ import annotations

from typing import Any

import pytest

from modelslab_async import Img2ImgRequest, InvalidRequestError, SafetyCheckerType, Scheduler
from modelslab_async._converter import request_from_wire, request_to_wire
from modelslab_async._models import ALGORITHM_TYPES, STEPS_ALLOWED
from modelslab_async.testing import _validation as fake_rules

BASE = {"model_id": "realistic-vision-51", "prompt": "a fox", "init_image": "https://e.com/f.png"}

# field: (values the docs allow, values they do not)
RULES: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "width": ((8, 512, 1024), (1032, 1020, 0)),
    "height": ((512,), (2048, 510)),
    "samples": ((1, 4), (0, 5)),
    "num_inference_steps": ((21, 31, 41), (20, 30, 50)),
    "guidance_scale": ((1, 7.5, 20), (0.5, 25)),
    "strength": ((0, 0.7, 1), (1.5, -0.1)),
    "clip_skip": ((1, 8), (0, 9)),
    "scheduler": (("LCMScheduler", "UniPCMultistepScheduler"), ("FooScheduler",)),
    "safety_checker_type": (("black", "blur"), ("hide",)),
    "algorithm_type": (("dpmsolver+++",), ("dpmsolver++", "karras")),
    "lora_strength": ((0.1, 1, "0.5,0.7"), (0.05, 2, "0.5,1.5", "strong")),
    "webhook": (
        ("https://example.com/hook", "http://localhost:8000/hook"),
        ("not a url", "ftp://example.com/hook"),
    ),
    "seed": ((0, 42), (-1,)),
    "track_id": (("order-17",), (17,)),
    "negative_prompt": (("blurry",), (3,)),
}
CASES = [
    (field, value, documented)
    for field, (allowed, refused) in RULES.items()
    for documented, values in ((True, allowed), (False, refused))
    for value in values
]


def _model_accepts(field: str, value: Any) -> bool:
    try:
        Img2ImgRequest(**BASE, **{field: value})
    except InvalidRequestError:
        return False
    return True


def _fake_accepts(body: dict[str, Any]) -> bool:
    return fake_rules.validate_submit(body) is None


@pytest.mark.parametrize(("field", "value", "documented"), CASES)
def test_model_and_fake_agree(field: str, value: Any, documented: bool) -> None:
    """A field value is accepted by both `Img2ImgRequest` and the fake, or by neither."""
    assert documented == _model_accepts(field, value)
    assert documented == _fake_accepts({**BASE, field: value})


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("yes", True), ("no", True), ("YES", True), ("No", True), ("true", True),
        ("FALSE", True), (True, True), (False, True), ("maybe", False), ("y", False),
    ],
)  # fmt: skip
@pytest.mark.parametrize("flag", ["safety_checker", "enhance_prompt", "tomesd", "temp"])
def test_yes_no_flags(flag: str, value: Any, allowed: bool) -> None:
    """Flags: "yes"/"no" in any case, true/false (as the docs' realtime API sends) in both."""
    try:
        request_from_wire({**BASE, flag: value})
    except InvalidRequestError:
        client_accepts = False
    else:
        client_accepts = True
    assert allowed == client_accepts
    assert allowed == _fake_accepts({**BASE, flag: value})


def test_what_the_client_sends_the_fake_accepts() -> None:
    """A request using every documented field goes out in a form the fake's rules accept."""
    request = Img2ImgRequest(
        **BASE, negative_prompt="blurry", width=768, height=512, samples=2,
        num_inference_steps=41, safety_checker=False,
        safety_checker_type=SafetyCheckerType.PIXELATE, enhance_prompt=False, guidance_scale=9,
        strength=0.4, scheduler=Scheduler.DPM_SOLVER_MULTISTEP, clip_skip=2, seed=7, tomesd=True,
        use_karras_sigmas=True, algorithm_type="dpmsolver+++", vae="v", lora_model="a,b",
        lora_strength="0.5,0.8", webhook="https://example.com/hook", track_id="t", temp=True,
    )  # fmt: skip
    assert fake_rules.validate_submit(request_to_wire(request)) is None


def test_enumerations_are_the_same() -> None:
    """Schedulers, safety checker types, steps and algorithm types are the same sets."""
    assert {member.value for member in Scheduler} == fake_rules.SCHEDULERS
    assert {member.value for member in SafetyCheckerType} == fake_rules.SAFETY_CHECKER_TYPES
    assert set(STEPS_ALLOWED) == fake_rules.STEPS
    assert set(ALGORITHM_TYPES) == fake_rules.ALGORITHM_TYPES
