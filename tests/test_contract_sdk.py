"""The official SDK, ``modelslab-py`` (the ``tests`` extra), works against the standalone fake."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .contract.standalone import standalone
from .contract.strict import strict_admin, strict_parse

DRIVER = Path(__file__).parent / "contract" / "sdk_driver.py"
KEYS = ("sk-sdk-quick-key-1", "sk-sdk-slow-key-2")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("modelslab_py") is None
    or importlib.util.find_spec("requests") is None,
    reason="the official SDK is not installed: pip install -e '.[tests]' (modelslab-py, requests)",
)


def test_official_sdk_against_the_standalone_fake() -> None:
    """img2img, processing then fetch, system_details and the server endpoints, via the SDK."""
    options = [
        "--server",
        "quick:2:0.05",
        "--server",
        "slow:1:0.4",
        "--processing-threshold",
        "0.2",
    ]
    with standalone(*options, keys=KEYS) as fake:
        ran = subprocess.run(
            [sys.executable, "-W", "ignore", str(DRIVER), fake.root_url, *KEYS],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        records = fake.control("GET", "records")
    assert 0 == ran.returncode, ran.stderr[-3000:]
    results = json.loads(ran.stdout)
    assert "success" == results["img2img"]["status"]
    assert results["img2img"]["output"][0].startswith(fake.root_url)
    assert "processing" == results["queued"]["status"]
    assert "success" == results["fetched"]["status"]
    assert results["queued"]["future_links"] == results["fetched"]["output"]
    assert {"model_count": 3, "status": "ok"} == {
        key: value for key, value in results["system_details"].items() if key != "queue_time"
    }
    assert "server updating" == results["update"]["message"]
    assert "server restarting" == results["restart"]["message"]
    assert "Cache cleared successfully" == results["clear_cache"]["message"]
    assert "Queue cleared, server is restarting" == results["clear_queue"]["message"]
    running, *waiting = [job["status"] for job in results["cleared"]]
    assert running in {"processing", "success"}
    assert ["failed", "failed"] == waiting
    for name in ("img2img", "queued", "fetched", *(f"cleared{n}" for n in range(3))):
        body = (
            results[name] if not name.startswith("cleared") else results["cleared"][int(name[-1])]
        )
        strict_parse(body)
    strict_admin("system_details", results["system_details"])
    paths = {record["path"].removeprefix("/api/v1/enterprise/") for record in records}
    assert {
        "images/img2img",
        "images/system_details",
        "images/update",
        "images/clear_queue",
    } <= paths
    assert any(path.startswith("images/fetch/") for path in paths)
    assert all(record["key_fingerprint"] != key for record in records for key in KEYS)
    everything = json.dumps(records) + ran.stdout + ran.stderr + fake.output
    assert not any(key in everything for key in KEYS)
