"""OpenAI's error envelope for every failure the API can return."""

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..coordinator.errors import APIError

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client of a whole (non-streamed) reply left before it was ready: its request was
    aborted, and there is no one to answer (one log line, not a traceback)."""


ANTHROPIC_PATHS = "/v1/messages"


def envelope(message: str, type_: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_json(path: str, status: int, message: str, type_: str, param=None, code=None,
               headers=None) -> JSONResponse:  # fmt: skip
    """An error in the shape of the API the path belongs to: Anthropic's or OpenAI's."""
    if path.startswith(ANTHROPIC_PATHS) or path.endswith(("/messages", "/messages/count_tokens")):
        from .anthropic import error_body

        body = error_body(status, message)
    else:
        body = envelope(message, type_, param, code)
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(e: APIError, path: str = "") -> JSONResponse:
    return error_json(path, e.status, e.message, e.type, e.param, e.code, e.headers)


def sse_error(e: Exception) -> str:
    if isinstance(e, APIError):
        body = envelope(e.message, e.type, e.param, e.code)
    else:
        body = envelope(f"internal error: {type(e).__name__}: {e}", "server_error")
    return f"data: {json.dumps(body)}\n\n"


class ParamError(ValueError):
    """A check of a request's field that names the field (OpenAI's `param`), e.g.
    `input[3].call_id`, where validation's own location would not."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _validation_message(err: dict) -> tuple[str, str | None]:
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return "The request body is not valid JSON: " + str(err.get("ctx", {}).get("error")), None
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, ParamError):
        return f"{msg.rstrip('.')}.", error.param
    if not loc:
        return f"Invalid request body: {msg}.", None
    # Unions report each branch; the field name is what the client needs.
    param = next((p for p in loc if not p.isdigit() and not p[:1].isupper()), loc[0])
    return f"Invalid '{'.'.join(loc)}': {msg}.", param


def _body_message(err: dict, content_type: str) -> str:
    """What is wrong with a body that is not a JSON object: its type, or nothing sent."""
    if "json" not in content_type.lower():
        got = f"'{content_type}'" if content_type else "no Content-Type"
        return (
            "Send the request body as a JSON object with Content-Type: application/json "
            f"(it came with {got})."
        )
    if err.get("type") == "missing":
        return "The request body is empty: send a JSON object."
    return f"The request body must be a JSON object: {err.get('msg', 'invalid value')}."


ENDPOINTS = (
    "the endpoints are POST /v1/chat/completions, POST /v1/completions, GET /v1/models, "
    "POST /v1/responses, POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/status, "
    "GET /health, "
    "GET /metrics"
)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        # A union reports each branch; a check of ours (value_error) says what to fix.
        errors.sort(key=lambda err: err.get("type") != "value_error")
        message, param = _validation_message(errors[0]) if errors else ("Invalid request.", None)
        first = errors[0] if errors else {}
        if tuple(first.get("loc", ())) == ("body",) and first.get("type") != "value_error":
            message = _body_message(first, request.headers.get("content-type", ""))
        path = request.url.path
        return error_json(path, 400, message, "invalid_request_error", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        path = request.url.path
        message = str(e.detail)
        if e.status_code == 404 and e.detail == "Not Found":  # no such route
            message = f"{request.method} {path} is not served here; {ENDPOINTS}"
            if path.startswith("/v1/v1/"):  # a base URL ending in /v1 where the SDK adds it
                message += (" (/v1 is doubled: Anthropic's SDKs and Claude Code add /v1 "
                            "themselves, so set their base URL to http://HOST:PORT)")  # fmt: skip
        elif e.status_code == 400 and "parsing the body" in message:
            message = "The request body is not JSON text in UTF-8; send a JSON object"
        return error_json(path, e.status_code, message, type_, headers=e.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, e: ClientGone):
        log.info("%s: the client left before the reply was ready; its request was aborted",
                 request.url.path)  # fmt: skip
        return Response(status_code=499)  # nginx's "client closed request": no one reads it

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        log.exception("unhandled error")
        message = f"internal error: {type(e).__name__}: {e}"
        return error_json(request.url.path, 500, message, "server_error")
