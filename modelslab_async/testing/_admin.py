"""The enterprise server endpoints besides img2img and fetch (spec section 5).

Each answers with the documented example body. ``clear_queue`` also fails every job still
waiting for a slot on the server, as the real one wipes the queue and restarts the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._jobs import JobBook, ServerSim
from ._validation import SCHEDULER_NAMES
from ._variants import AnswerKind

__all__ = ["ADMIN_ENDPOINTS", "CLEARED_FAILURE", "admin_answer", "model_not_found"]

#: Every server endpoint the fake serves, under the documented and the SDK (``images/``) paths.
#: ``update`` is the path the official SDKs call for ``update_server``.
ADMIN_ENDPOINTS = (
    "system_details",
    "schedulers_list",
    "get_all_models",
    "verify_model",
    "restart_server",
    "update_server",
    "update",
    "clear_cache",
    "clear_queue",
)
#: The message of a queued job failed by ``clear_queue``.
CLEARED_FAILURE = "Request cancelled: the queue was cleared and the server restarted."
# The docs' example load date (the key really is "load_data").
_LOAD_DATE = "01/25/2023 11:52:22"
_FIXED: dict[str, dict[str, str]] = {
    "restart_server": {"message": "server restarting", "status": "success"},
    "update_server": {"message": "server updating", "status": "success"},
    "update": {"message": "server updating", "status": "success"},
    "clear_cache": {"status": "success", "message": "Cache cleared successfully"},
    "clear_queue": {"status": "success", "message": "Queue cleared, server is restarting"},
}


def model_not_found(model_id: Any) -> dict[str, Any]:
    """Return the documented error for a model the server does not have."""
    return {"status": "error", "message": f"Model not found: {model_id}"}


def admin_answer(
    name: str, body: Mapping[str, Any], server: ServerSim, jobs: JobBook, now: float
) -> tuple[dict[str, Any], AnswerKind | None]:
    """Serve server endpoint ``name`` for ``server``.

    Returns:
        The answer's body and the kind of answer it is, for the response variants.
    """
    models = server.spec.models
    if name == "system_details":
        queue_time = round(server.queue_time(now), 3)
        return {"model_count": len(models), "queue_time": queue_time, "status": "ok"}, None
    if name == "schedulers_list":
        return {"schedulers": list(SCHEDULER_NAMES)}, "schedulers"
    if name == "get_all_models":
        listed = [{"load_data": _LOAD_DATE, "model_id": model} for model in models]
        return {"models": listed, "status": "success"}, None
    if name == "verify_model":
        model_id = body.get("model_id")
        if model_id is None or model_id == "":
            return {"status": "error", "message": "The model id field is required."}, (
                "request_error"
            )
        if model_id not in models:
            return model_not_found(model_id), "request_error"
        return {"status": "success", "message": "Model exists on server"}, None
    if name == "clear_queue":
        for job in jobs.waiting(server, now):
            job.end_now(now, CLEARED_FAILURE)
        server.clear_queue(now)
    return dict(_FIXED[name]), None
