"""The command line's parts, in process: manifest, journal, settings, downloads, reporting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from modelslab_async import InvalidRequestError
from modelslab_async._cli import _report, _table, main
from modelslab_async._cli._download import sniff_image
from modelslab_async._cli._journal import JournalWriter, Record, read_journal
from modelslab_async._cli._manifest import count_lines, read_manifest
from modelslab_async._cli._names import file_stem, image_names
from modelslab_async._cli._report import PlainReporter, RichReporter, make_reporter
from modelslab_async._cli._settings import load_settings
from modelslab_async._cli._summary import BatchStats
from modelslab_async._cli._table import Table, render_tables

from .cli_fixtures import SECRET_KEYS, job_line, write_manifest

# --- manifest ---------------------------------------------------------------------------------


def test_manifest_ids_default_to_the_line_number_and_blank_lines_are_skipped(
    tmp_path: Path,
) -> None:
    """A line without an id is named by its line number; blank lines are not jobs."""
    line = job_line("x")
    del line["id"]
    manifest = write_manifest(tmp_path / "m.jsonl", [line, "", "   ", job_line(7, track_id="7")])
    entries = list(read_manifest(manifest))
    assert [("1", 1), ("7", 4)] == [(e.id, e.line) for e in entries]
    assert all(e.request is not None and e.error is None for e in entries)
    assert 2 == count_lines(manifest)


def test_manifest_relative_init_image_paths_are_read_from_the_manifest_directory(
    tmp_path: Path,
) -> None:
    """`init_image: "cat.png"` means the file beside the manifest, whatever the cwd."""
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line("a", init_image="cat.png")])
    (entry,) = read_manifest(manifest)
    assert entry.request is not None
    assert tmp_path / "cat.png" == entry.request.init_image


def test_manifest_bad_lines_name_their_line_and_do_not_stop_the_rest(tmp_path: Path) -> None:
    """Invalid JSON, a non-object, a bad id, a repeated id and a bad field are each reported."""
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            '{"id": "a", ',
            "42",
            job_line(True),
            job_line("b"),
            job_line("b"),
            job_line("c", samples=9),
        ],
    )
    with manifest.open("ab") as stream:
        stream.write(b'{"id": "\xff"}\n')
    entries = list(read_manifest(manifest))
    assert [1, 2, 3, 4, 5, 6, 7] == [e.line for e in entries]
    assert ["1", "2", "3", "b", None, "c", "7"] == [e.id for e in entries]
    errors = [None if e.error is None else str(e.error) for e in entries]
    assert errors[3] is None
    assert "manifest line 1: is not valid JSON" in str(errors[0])
    assert "must be a JSON object, got int" in str(errors[1])
    assert "manifest line 3: id: must be" in str(errors[2])
    assert "repeats the id of line 4" in str(errors[4])
    assert "samples" in str(errors[5])
    assert "not UTF-8" in str(errors[6])


def test_a_bad_line_named_by_its_number_never_shares_an_id_with_another_line(
    tmp_path: Path,
) -> None:
    """A bad line takes its line number as id only when no other line has that id."""
    manifest = write_manifest(
        tmp_path / "m.jsonl", [job_line("3"), "{bad", "[]", job_line("2"), job_line("x")]
    )
    entries = list(read_manifest(manifest))
    assert ["3", "2", None, None, "x"] == [e.id for e in entries]
    assert "repeats the id of line 2" in str(entries[3].error)


def test_a_key_in_a_manifest_line_is_refused_without_being_repeated(tmp_path: Path) -> None:
    """A manifest line holding a key is a bad line, and the message does not quote the key."""
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line("a", key=SECRET_KEYS[0])])
    (entry,) = read_manifest(manifest)
    assert entry.error is not None
    assert SECRET_KEYS[0] not in str(entry.error)
    assert str(entry.error).startswith("manifest line 1: key: ")


# --- journal ----------------------------------------------------------------------------------


def test_journal_index_final_wins_over_generated_over_accepted(tmp_path: Path) -> None:
    """Whatever the order of records, a final record decides; else generated, else accepted."""
    path = tmp_path / "r.jsonl"
    writer = JournalWriter(path)
    for record in (
        Record(id="a", status="accepted", request_id="1", server="s"),
        Record(id="a", status="generated", request_id="1", server="s", output=("u",)),
        Record(id="b", status="succeeded"),
        Record(id="b", status="accepted", request_id="2"),
        Record(id="c", status="accepted", request_id="3", server="s2"),
        Record(id=None, status="failed", line=9, error_type="InvalidRequestError"),
    ):
        writer.write(record)
    writer.close()
    writer.close()
    index = read_journal(path)
    assert {"b": "succeeded"} == index.final
    assert {9} == index.final_lines
    assert ["a"] == list(index.generated)
    assert ("u",) == index.generated["a"].output
    assert {"c": ("3", "s2")} == {k: (r.request_id, r.server) for k, r in index.accepted.items()}


def test_journal_tolerates_a_cut_last_line_and_writes_on_a_fresh_line(tmp_path: Path) -> None:
    """A kill mid-write leaves half a line: it is ignored, and the next record starts anew."""
    path = tmp_path / "r.jsonl"
    path.write_text(Record(id="a", status="succeeded").to_json() + '\n{"id": "b", "sta')
    index = read_journal(path)
    assert (True, ["a"], []) == (index.truncated, list(index.final), index.unreadable)
    writer = JournalWriter(path)
    writer.write(Record(id="b", status="failed", error_type="X", error="boom"))
    writer.close()
    lines = path.read_text().splitlines()
    assert '{"id": "b", "sta' == lines[1]
    assert "b" == json.loads(lines[2])["id"]
    assert {"a": "succeeded", "b": "failed"} == read_journal(path).final
    assert [2] == read_journal(path).unreadable


def test_a_results_file_in_use_by_another_run_is_refused(tmp_path: Path) -> None:
    """Two runs may not append to the same results file."""
    path = tmp_path / "r.jsonl"
    first = JournalWriter(path)
    try:
        with pytest.raises(InvalidRequestError, match="another run"):
            JournalWriter(path)
    finally:
        first.close()


def test_a_missing_results_file_is_an_empty_journal(tmp_path: Path) -> None:
    """Nothing to resume when the results file does not exist yet."""
    index = read_journal(tmp_path / "none.jsonl")
    assert ({}, {}, {}) == (index.final, index.accepted, index.generated)


# --- settings ---------------------------------------------------------------------------------


def test_keys_from_the_environment_name_servers_in_order() -> None:
    """`MODELSLAB_API_KEYS` gives server-1..N; MODELSLAB_BASE_URL is used when given."""
    env = {
        "MODELSLAB_API_KEYS": f" {SECRET_KEYS[0]} ,{SECRET_KEYS[1]},",
        "MODELSLAB_BASE_URL": "http://localhost:1/api",
    }
    settings = load_settings(config=None, base_url=None, routing=None, environ=env)
    assert ["server-1", "server-2"] == [s.name for s in settings.servers]
    assert [SECRET_KEYS[0], SECRET_KEYS[1]] == [s.key.reveal() for s in settings.servers]
    assert ("http://localhost:1/api", "first-server") == (settings.base_url, settings.routing)
    assert SECRET_KEYS[0] not in repr(settings)


def test_command_line_options_override_the_environment() -> None:
    """--base-url and --routing win over the environment."""
    env = {"MODELSLAB_API_KEYS": SECRET_KEYS[0], "MODELSLAB_BASE_URL": "http://a/"}
    settings = load_settings(
        config=None, base_url="https://b/api", routing="round-robin", environ=env, job_timeout=5
    )
    assert ("https://b/api", "round-robin") == (settings.base_url, settings.routing)
    assert settings.timeouts is not None
    assert 5 == settings.timeouts.job


@pytest.mark.parametrize(
    ("env", "base_url", "message"),
    [
        ({}, None, "MODELSLAB_API_KEYS"),
        ({"MODELSLAB_API_KEYS": " , "}, None, "--config FILE"),
        ({"MODELSLAB_API_KEYS": f"{SECRET_KEYS[0]},{SECRET_KEYS[0]}"}, None, "listed twice"),
        ({"MODELSLAB_API_KEYS": SECRET_KEYS[0]}, "ftp://x", "not an http(s) URL"),
    ],
)
def test_unusable_settings_are_refused_with_a_message_and_no_key(
    env: dict[str, str], base_url: str | None, message: str
) -> None:
    """No keys, a repeated key or a bad base URL: a clear error that never quotes a key."""
    with pytest.raises(InvalidRequestError) as caught:
        load_settings(config=None, base_url=base_url, routing=None, environ=env)
    assert message in str(caught.value)
    assert SECRET_KEYS[0] not in str(caught.value)


def test_an_unreadable_config_file_is_a_usage_error(tmp_path: Path) -> None:
    """A missing config file is named in the error."""
    with pytest.raises(InvalidRequestError, match="cannot read"):
        load_settings(config=tmp_path / "no.toml", base_url=None, routing=None, environ={})


def test_main_returns_2_without_keys_and_0_for_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process: no keys is exit 2 with a message; --version is exit 0."""
    monkeypatch.delenv("MODELSLAB_API_KEYS", raising=False)
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line("a")])
    assert 2 == main(["batch", str(manifest), "--out", str(tmp_path / "r.jsonl")])
    assert "MODELSLAB_API_KEYS" in capsys.readouterr().err
    assert 0 == main(["--version"])
    assert "modelslab-async" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        main(["batch", str(manifest), "--concurrency", "0", "--out", "r"])
    assert 2 == usage.value.code


# --- downloads --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"\xff\xd8\xff\xe0....", "jpg"),
        (b"GIF89a....", "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"<html>oops</html>", None),
    ],
)
def test_images_are_recognised_by_their_first_bytes(data: bytes, expected: str | None) -> None:
    """Known image types get their extension; anything else is not an image."""
    assert expected == sniff_image(data)


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("job-1", "job-1"),
        ("a b", "a%20b"),
        ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
        ("..", "%2E."),
        ("same+1", "same%2B1"),
        ("50%", "50%25"),
        ("é", "%C3%A9"),
    ],
)
def test_file_names_are_safe_and_unique_per_id(job_id: str, expected: str) -> None:
    """Ids become safe file names by escaping: plain ids are kept, others are escaped."""
    assert expected == file_stem(job_id)


def test_image_names_never_collide_whatever_the_ids() -> None:
    """Job `same` with 2 samples and job `same-1` (or `same+1`) write different files."""
    names = [
        *image_names("same", 2),
        *image_names("same-1", 1),
        *image_names("same+1", 1),
        *image_names("same-1", 2),
    ]
    assert ["same+1", "same+2", "same-1", "same%2B1", "same-1+1", "same-1+2"] == names
    assert len(set(names)) == len(names)


def test_long_ids_are_shortened_with_a_hash_and_stay_distinct() -> None:
    """Ids too long for a file name are cut and hashed; two that share the cut differ."""
    first, second = "x" * 300 + "a", "x" * 300 + "b"
    assert file_stem(first) != file_stem(second)
    assert all(len(n.encode()) < 120 for n in image_names(first, 4))
    assert "~" in file_stem(first)
    assert "~" not in file_stem("x" * 90)
    assert file_stem("%" * 40) != file_stem("%" * 41)


# --- reporting --------------------------------------------------------------------------------


def test_plain_reporter_prints_notes_and_a_final_status_line() -> None:
    """Without a terminal: time-stamped notes, and totals with done, failed, in flight, ETA."""
    stream = io.StringIO()
    reporter = make_reporter(stream, interactive=False, interval=0)
    assert isinstance(reporter, PlainReporter)
    stats = BatchStats(total=4, succeeded=1, failed=1, in_flight=2)
    reporter.start(stats)
    reporter.note("job 3 failed: ServerError")
    reporter.refresh()
    reporter.stop()
    text = stream.getvalue()
    assert "job 3 failed: ServerError" in text
    assert "2/4 ended, 1 ok, 1 failed, 2 in flight" in text
    assert "ETA" in text


def test_rich_reporter_draws_a_bar_and_falls_back_to_lines_without_rich(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminal the bar is rich's; when rich is missing, plain lines are used."""
    stream = io.StringIO()
    reporter = make_reporter(stream, interactive=True)
    assert isinstance(reporter, RichReporter)
    stats = BatchStats(total=3, succeeded=2, downloading=1)
    reporter.start(stats)
    reporter.note("a note with [brackets]")
    reporter.refresh()
    reporter.stop()
    assert "a note with [brackets]" in stream.getvalue()
    monkeypatch.setattr(_report, "rich_available", lambda: False)
    assert isinstance(make_reporter(io.StringIO(), interactive=True), PlainReporter)


def test_summary_tables_show_failures_by_type_and_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The summary lists failures by type and each server's share and latency."""
    stats = BatchStats(total=3)
    stats.job_ended("gpu-a", 1.0, None)
    stats.job_ended("gpu-a", 3.0, None)
    stats.job_ended("gpu-b", 0.5, "RateLimitError")
    for fancy in (False, True):
        stream = io.StringIO()
        render_tables(stats.tables(), stream, fancy=fancy)
        text = stream.getvalue()
        assert "failed: RateLimitError" in text
        assert "100%" in text
        assert "2.00" in text
    assert {"RateLimitError": 1} == stats.as_json()["failures"]
    assert 2.0 == stats.as_json()["servers"]["gpu-a"]["latency_mean"]
    monkeypatch.setattr(_table, "rich_available", lambda: False)
    stream = io.StringIO()
    render_tables([Table(title="t", headers=("a", "b"), rows=[("1", "2")])], stream, fancy=True)
    assert "t\n  a  b\n  -  -\n  1  2\n\n" == stream.getvalue()
