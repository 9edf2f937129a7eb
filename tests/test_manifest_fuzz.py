"""No manifest line can stop a batch: fuzzed lines all end as a request or a typed bad line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelslab_async import Img2ImgRequest, InvalidRequestError, request_from_wire
from modelslab_async._cli._manifest import MAX_DEPTH, read_manifest

URL = "https://example.com/cat.png"
FIELDS = [a.name for a in attrs.fields(Img2ImgRequest) if a.name != "extra"]
REQUIRED = {"model_id": "realistic-vision-51", "prompt": "a cat", "init_image": URL}
LINES_PER_EXAMPLE = 50
EXAMPLES = 200  # 10,000 lines in all
LONGEST_MESSAGE = 600

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["²", "--8", "-8", "8", " 512 ", "1e3", "0x10", "yes", "no", "nan", "١٢"]),
    st.sampled_from(["DDIMScheduler", "blur", "0.5,0.7", "dpmsolver+++", "../x.png", "/etc/x"]),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=2)
    ),
    max_leaves=4,
)
names = st.sampled_from([*FIELDS, "id", "base64", "key", "ip_adapter_id"]) | st.text(max_size=6)
bodies = st.dictionaries(names, json_values, max_size=4)
# One field of a valid request set to a random value: the cheapest way to reach every hook.
one_field = st.builds(
    lambda name, value: {**REQUIRED, name: value},
    st.sampled_from([*FIELDS, "id", "base64"]),
    scalars | json_values,
)
BASE = json.dumps(REQUIRED)[1:-1]  # the required fields, to put inside a hand-made object
HOSTILE = [
    '{"id": "w", "width": "²", ' + BASE + "}",
    '{"width": "--8", ' + BASE + "}",
    '{"seed": ' + "7" * 5000 + ", " + BASE + "}",
    '{"seed": ' + "7" * 4000 + ", " + BASE + "}",
    '{"lora_strength": [1], ' + BASE + "}",
    '{"strength": 1e999, ' + BASE + "}",
    '{"samples": NaN, ' + BASE + "}",
    "[" * 100_000 + "]" * 100_000,
    '{"a": ' * (MAX_DEPTH + 5) + "1" + "}" * (MAX_DEPTH + 5),
    '{"id": "\\ud800", "model_id": "m"}',
    '{"id": "a\\u001b[31mred"}',
    '{"prompt": "\\ud800", "model_id": "m", "init_image": "' + URL + '"}',
    '{"init_image": "../../etc/passwd", "model_id": "m", "prompt": "p"}',
    '{"init_image": "/etc/passwd", "model_id": "m", "prompt": "p"}',
    '{"init_image": "a\\u0000b", "model_id": "m", "prompt": "p"}',
    '{"id": 1e5}',
    '{"id": ' + "9" * 600 + "}",
    '{"extra": {"x": 1}, ' + BASE + "}",
    '{"prompt": "' + "x" * 100_000 + '"}',
]
lines = st.one_of(
    one_field.map(json.dumps),
    one_field.map(json.dumps),
    bodies.map(json.dumps),
    json_values.map(json.dumps),
    st.sampled_from(HOSTILE),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
    st.text(max_size=40).map(lambda t: t.replace("\n", " ")),
)
manifests = st.tuples(st.booleans(), st.lists(lines, min_size=LINES_PER_EXAMPLE, max_size=50))


def as_bytes(line: str | bytes) -> bytes:
    return line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")


def check_entries(path: Path, raw_lines: list[bytes]) -> int:
    """Every non-blank line is one entry: a request, or an InvalidRequestError naming its line."""
    entries = list(read_manifest(path))
    expected = [
        n
        for n, raw in enumerate(raw_lines, start=1)
        if (raw.removeprefix(BOM) if n == 1 else raw).strip()
    ]
    assert expected == [entry.line for entry in entries]
    for entry in entries:
        assert (entry.request is None) != (entry.error is None)
        if entry.error is not None:
            assert type(entry.error) is InvalidRequestError
            text = str(entry.error)
            assert text.startswith(f"manifest line {entry.line}: ")
            assert len(text) <= LONGEST_MESSAGE
            assert "internal error" not in text
    return len(entries)


BOM = b"\xef\xbb\xbf"
SEEN = {"lines": 0}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(manifests)
def test_no_manifest_line_raises_or_is_lost(manifest: tuple[bool, list[str | bytes]]) -> None:
    """Random JSON and types, huge numbers, deep nesting, a BOM, binary: only typed bad lines."""
    bom, generated = manifest
    raw_lines = [as_bytes(line) for line in generated]
    if bom:
        raw_lines[0] = BOM + raw_lines[0]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.jsonl"
        path.write_bytes(b"\n".join(raw_lines) + b"\n")
        check_entries(path, raw_lines)
    SEEN["lines"] += len(raw_lines)


def test_the_fuzzer_read_ten_thousand_lines() -> None:
    """The property above ran over 10,000 generated lines (run after it, in file order)."""
    if SEEN["lines"] == 0:
        pytest.skip("run with the fuzz test")
    assert SEEN["lines"] >= EXAMPLES * LINES_PER_EXAMPLE


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(bodies, one_field))
def test_request_from_wire_raises_only_invalid_request_error(body: dict[str, Any]) -> None:
    """The converter turns any JSON object into a request or an InvalidRequestError."""
    outcome: Img2ImgRequest | InvalidRequestError
    try:
        outcome = request_from_wire(body)
    except InvalidRequestError as error:
        outcome = error
    assert isinstance(outcome, Img2ImgRequest) or len(str(outcome)) <= LONGEST_MESSAGE


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("width", "²", "'²' is not an integer"),
        ("width", "--8", "'--8' is not an integer"),
        ("width", 7 * 10**60, "-bit integer is too large"),
        ("seed", 2**70, "is too large"),
        ("lora_strength", [1], "a list is not a number"),
        ("guidance_scale", "١٢", "is not a number"),
        ("tomesd", 1, "1 is not a flag"),
        ("scheduler", {"a": 1}, "a dict is not allowed"),
        ("prompt", 5, "must be a string, got 5"),
        ("negative_prompt", "x" * 10_000_000, None),
    ],
)
def test_bad_values_name_their_field_and_are_quoted_short(
    field: str, value: Any, says: str | None
) -> None:
    """Each bad value is refused by its field's type hook, quoted cut to a short prefix."""
    body = {**REQUIRED, field: value}
    if says is None:  # a long string is fine for a string field
        assert value == getattr(request_from_wire(body), field)
        return
    with pytest.raises(InvalidRequestError) as caught:
        request_from_wire(body)
    assert field == caught.value.field
    assert says in str(caught.value)
    assert len(str(caught.value)) < LONGEST_MESSAGE


def test_values_are_coerced_by_their_real_types() -> None:
    """Numeric strings, integral floats, flags and enum names become the field's own type."""
    request = request_from_wire(
        {
            **REQUIRED,
            "width": " 512 ",
            "height": 512.0,
            "samples": "+2",
            "strength": "0.5",
            "lora_strength": 0.7,
            "lora_model": "a",
            "safety_checker": "No",
            "scheduler": "DDIMScheduler",
            "seed": "12",
        }
    )
    assert (512, 512, 2, 0.5, 0.7, False, 12) == (
        request.width,
        request.height,
        request.samples,
        request.strength,
        request.lora_strength,
        request.safety_checker,
        request.seed,
    )
    assert "DDIMScheduler" == request.scheduler
    assert "0.5,0.7" == request_from_wire({**REQUIRED, "lora_strength": "0.5,0.7"}).lora_strength


def test_a_bom_on_line_one_is_fine(tmp_path: Path) -> None:
    """A UTF-8 byte order mark before the first line (Windows editors) is not a bad line."""
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(BOM + json.dumps({**REQUIRED, "id": "a"}).encode() + b"\n")
    (entry,) = read_manifest(path)
    assert ("a", None) == (entry.id, entry.error)


def test_a_line_longer_than_the_cap_is_a_bad_line_and_the_next_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An over-long line is refused without being held whole; the lines after it are read."""
    from modelslab_async._cli import _manifest

    monkeypatch.setattr(_manifest, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "jobs.jsonl"
    good = json.dumps({**REQUIRED, "id": "b"})
    path.write_text(json.dumps({**REQUIRED, "prompt": "x" * 5000}) + "\n" + good + "\n")
    first, second = read_manifest(path)
    assert "manifest line 1: is longer than" in str(first.error)
    assert ("b", None) == (second.id, second.error)
