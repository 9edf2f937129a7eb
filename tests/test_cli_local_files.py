"""Local files as init_image: the manifest's folder only, images only, capped, read once."""

from __future__ import annotations

import base64
import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest

from modelslab_async._cli import _batch, _download
from modelslab_async._cli._commands import execute_batch
from modelslab_async._cli._inputs import BatchOptions
from modelslab_async._cli._local import read_local_image
from modelslab_async._cli._manifest import read_manifest
from modelslab_async._cli._settings import load_settings
from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault
from modelslab_async.testing._png import png_bytes

from .cli_fixtures import SECRET_KEYS, assert_no_key_leaks, finals_by_id, job_line, read_records
from .cli_fixtures import write_manifest as write_lines

PNG = png_bytes((9, 8, 7))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A manifest folder holding cat.png, with a different cat.png in the cwd and outside."""
    inside = tmp_path / "jobs"
    inside.mkdir()
    (inside / "cat.png").write_bytes(PNG)
    (tmp_path / "outside.png").write_bytes(png_bytes((1, 1, 1)))
    return inside


def entry_for(folder: Path, image: str, **kwargs: Any) -> Any:
    manifest = write_lines(folder / "m.jsonl", [job_line("a", init_image=image)])
    (entry,) = read_manifest(manifest, **kwargs)
    return entry


def test_a_relative_path_is_read_from_the_manifest_folder_not_the_cwd(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cat.png means the manifest's cat.png, even when the cwd holds another one."""
    (tmp_path / "cat.png").write_bytes(png_bytes((0, 0, 0)))
    monkeypatch.chdir(tmp_path)
    entry = entry_for(folder, "cat.png")
    assert folder.resolve() / "cat.png" == entry.request.init_image
    assert PNG == read_local_image(entry.request.init_image)


def test_a_file_only_in_the_cwd_is_not_found(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path missing from the manifest's folder is a bad line, never the cwd's file."""
    (tmp_path / "only-here.png").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    entry = entry_for(folder, "only-here.png")
    assert "init_image: file not found: only-here.png" in str(entry.error)
    assert str(folder.resolve()) in str(entry.error)


@pytest.mark.parametrize("image", ["../outside.png", "{tmp}/outside.png", "link.png"])
def test_paths_leading_outside_the_folder_are_refused_unless_allowed(
    folder: Path, tmp_path: Path, image: str
) -> None:
    """../, an absolute path elsewhere and a symlink out are refused; the flag allows them."""
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    image = image.format(tmp=tmp_path)
    refused = entry_for(folder, image)
    assert refused.request is None
    assert "outside the manifest's folder" in str(refused.error)
    assert "--allow-outside-files" in str(refused.error)
    allowed = entry_for(folder, image, allow_outside_files=True)
    assert allowed.error is None
    assert (tmp_path / "outside.png").resolve() == allowed.request.init_image


def test_a_symlink_inside_the_folder_and_an_absolute_path_inside_are_fine(folder: Path) -> None:
    """Links and absolute paths that stay in the folder are allowed."""
    (folder / "sub").mkdir()
    (folder / "sub" / "alias.png").symlink_to(folder / "cat.png")
    assert entry_for(folder, "sub/alias.png").error is None
    assert entry_for(folder, str(folder / "cat.png")).error is None


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("notes.png", b"just some text, not an image at all", "is not a PNG, JPEG or WebP"),
        ("empty.png", b"", "is not a PNG, JPEG or WebP"),
        ("huge.png", PNG + b"\0" * 2048, "is larger than 1024 bytes"),
    ],
)
def test_only_images_below_the_cap_are_read(
    folder: Path, name: str, data: bytes, says: str
) -> None:
    """Text files and oversize files are refused by their content and size, not their name."""
    (folder / name).write_bytes(data)
    path = entry_for(folder, name).request.init_image
    with pytest.raises(ValueError, match=says):
        read_local_image(path, max_bytes=1024)


def test_directories_and_devices_are_not_files(folder: Path) -> None:
    """A directory is not a regular file."""
    (folder / "dir.png").mkdir()
    assert "is not a regular file" in str(entry_for(folder, "dir.png").error)


async def test_a_local_image_is_read_once_per_job_and_sent_on_every_attempt(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a retried submit, the file is read once and the same bytes go out twice."""
    reads: list[Path] = []
    real = _batch.read_local_image

    def counting(path: Path, **kwargs: Any) -> bytes:
        reads.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(_batch, "read_local_image", counting)
    manifest = write_lines(folder / "m.jsonl", [job_line("a", init_image="cat.png")])
    async with FakeModelsLab(processing_threshold=5.0, seed=2) as fake:
        fake.add_fault(Fault.server_error(500, count=1))
        code = await run_batch(fake, manifest, folder / "results.jsonl")
        submits = [r for r in fake.received if r.endpoint == "submit"]
    assert 0 == code
    assert 1 == len(reads)
    assert 2 == len(submits)
    sent = {r.body["init_image"] for r in submits}  # the fake keeps 64 characters
    assert {base64.b64encode(PNG).decode()[:64]} == sent


async def test_an_image_that_cannot_be_written_stays_for_the_next_run(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk full at every try leaves the job `generated`, not final; the next run saves it."""
    manifest = write_lines(folder / "m.jsonl", [job_line(f"w{n}") for n in range(3)])
    results, images = folder / "results.jsonl", folder / "images"

    def full_disk(_: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async with FakeModelsLab(
        [FakeServerSpec("server-1", SECRET_KEYS[0], service_time=0.01)], processing_threshold=5.0
    ) as fake:
        with monkeypatch.context() as patched:
            patched.setattr(_download.os, "fsync", full_disk)
            patched.setattr(_download.Downloader, "__init__", fast_retries())
            first = await run_batch(fake, manifest, results, images=images)
        records = read_records(results)
        assert 1 == first
        assert {} == finals_by_id(records)
        assert 3 == sum(r["status"] == "generated" for r in records)
        seen = len(fake.received)
        second = await run_batch(fake, manifest, results, images=images)
        rerun = {r.endpoint for r in fake.received[seen:]}
    assert 0 == second
    assert {"image"} == rerun
    finals = finals_by_id(read_records(results))
    assert {"succeeded"} == {found[0]["status"] for found in finals.values()}
    assert 3 == len(list(images.glob("w*.png")))
    assert_no_key_leaks(directory=folder)


def fast_retries() -> Any:
    original = _download.Downloader.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "backoff": 0.001})

    return init


async def run_batch(
    fake: FakeModelsLab, manifest: Path, results: Path, *, images: Path | None = None
) -> int:
    settings = load_settings(
        config=None,
        base_url=fake.base_url,
        routing=None,
        environ={"MODELSLAB_API_KEYS": ",".join(fake.keys)},
    )
    options = BatchOptions(manifest=manifest, results=results, images=images)
    return await execute_batch(settings, options, out=io.StringIO(), err=io.StringIO())
