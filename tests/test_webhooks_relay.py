"""Several processes behind one webhook URL: a callback that lands on another process is
relayed through Redis to the process that awaits the job."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from uuid import uuid4

from modelslab_async import Client, PollPolicy, Server, ServerPool, WebhookReceiver
from modelslab_async.testing import FakeModelsLab, FakeServerSpec

from ._helpers import make_request
from ._redis_server import RedisServer

REPO = Path(__file__).parent.parent
SECRET = "one-secret-for-every-worker-of-the-app"

OTHER_WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    from aiohttp import web
    from modelslab_async import WebhookReceiver
    from modelslab_async.redis import RedisWebhookRelay

    async def main() -> None:
        port, redis_url, namespace, secret = sys.argv[1:5]
        relay = RedisWebhookRelay.from_url(redis_url, namespace=namespace)
        hooks = WebhookReceiver(f"http://127.0.0.1:{port}/hooks", secret=secret, relay=relay)
        app = web.Application()
        app.add_subapp("/hooks", hooks.aiohttp_app())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(port)).start()
        async with relay:
            print("READY", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()
        print(json.dumps(hooks.stats), flush=True)

    asyncio.run(main())
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_callback_received_by_another_process_resolves_the_awaiting_job(
    redis_server: RedisServer, redis_api: ModuleType
) -> None:
    """The app's other worker gets the callback; this process, which submitted the job,
    returns its result with no fetch at all (polling would only start 30 s later)."""
    namespace = f"relay-{uuid4().hex[:8]}"
    port = free_port()
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_WORKER, str(port), redis_server.url, namespace, SECRET],
        cwd=REPO,
        env=dict(os.environ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        assert "READY" in other.stdout.readline()
        relay = redis_api.RedisWebhookRelay.from_url(redis_server.url, namespace=namespace)
        hooks = WebhookReceiver(f"http://127.0.0.1:{port}/hooks", secret=SECRET, relay=relay)
        spec = FakeServerSpec("gpu-1", "sk-relay-test-key-000111", slots=2, service_time=0.1)
        poll = PollPolicy(webhook_grace=30)
        pool = ServerPool([Server(key=spec.key, name=spec.name)])
        async with FakeModelsLab([spec], processing_threshold=0.0) as fake, relay:
            async with Client(pool, base_url=fake.base_url, webhooks=hooks, poll=poll) as client:
                started = time.monotonic()
                result = await client.img2img(make_request())
                took = time.monotonic() - started
        fetches = [r for r in fake.received if r.endpoint == "fetch"]
    finally:
        out, err = other.communicate(input="", timeout=20)
    assert result.output
    assert not fetches
    assert took < 5
    assert 1 == hooks.stats["accepted"]
    assert '"relayed": 1' in out, err
