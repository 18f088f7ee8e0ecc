"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, Response

__all__ = ["OpenAIError", "openai_error_body", "install_error_handler"]


def openai_error_body(
    message: str, type: str = "invalid_request_error", code: str | None = None, param: Any = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenAIError(HTTPException):
    """An HTTP error whose body is OpenAI-shaped.

    With :func:`install_error_handler` (``Monitor.install`` calls it) the body
    is ``{"error": {...}}``; without it FastAPI's default handler still answers
    with the status and headers, the body under ``"detail"``.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.body = openai_error_body(message, type, code, param)
        super().__init__(status_code, detail=self.body, headers=dict(headers or {}))


async def _openai_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)


def install_error_handler(app: FastAPI) -> None:
    """Answer :class:`OpenAIError` with its OpenAI-shaped body."""
    app.add_exception_handler(OpenAIError, _openai_error_handler)
