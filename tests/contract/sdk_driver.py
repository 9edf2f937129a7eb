"""Drive a fake with the official SDK, ``modelslab-py``, as its users would; print JSON results.

Usage: ``python sdk_driver.py ROOT_URL QUICK_KEY SLOW_KEY``. Only the SDK's base URL is changed
(``https://modelslab.com/api/`` -> ``ROOT_URL/api/``). Run in its own process: the SDK's pydantic
models warn on import, and it uses ``requests``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from modelslab_py.core.apis.community import Community
from modelslab_py.core.client import Client
from modelslab_py.schemas.community import Image2Image

FETCH_PAUSE = 0.05  # the SDK sleeps this long between fetches (60 s by default)


def _community(root: str, key: str, *, fetch_retry: int = 100) -> Community:
    client = Client(api_key=key, fetch_retry=fetch_retry, fetch_timeout=FETCH_PAUSE)  # type: ignore[arg-type]
    client.base_url = f"{root}/api/"
    return Community(client, enterprise=True)


def _schema(**extra: Any) -> Image2Image:
    return Image2Image(
        model_id="realistic-vision-51",
        prompt="a watercolor fox",
        init_image="https://example.com/fox.png",
        width=512,
        height=512,
        samples=1,
        num_inference_steps=31,
        **extra,
    )


def main() -> None:
    root, quick_key, slow_key = sys.argv[1:4]
    quick = _community(root, quick_key)
    slow = _community(root, slow_key)
    results: dict[str, Any] = {}
    # The first key is the load balancer's: pin it to its own (quick) server.
    results["img2img"] = quick.image_to_image(_schema(loadbalancer="no", strength=0.7))
    queued = slow.image_to_image(_schema())
    results["queued"] = queued
    results["fetched"] = slow.fetch(str(queued["id"]))
    results["system_details"] = slow.system_details()
    results["clear_cache"] = slow.clear_cache()
    results["restart"] = slow.restart()
    results["update"] = slow.update()
    waiting = [slow.image_to_image(_schema()) for _ in range(3)]
    results["clear_queue"] = slow.clear_queue()
    # The SDK polls on until "success", even a failed job: ask once.
    once = _community(root, slow_key, fetch_retry=1)
    results["cleared"] = [once.fetch(str(job["id"])) for job in waiting]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
