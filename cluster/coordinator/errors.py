"""Errors the coordinator raises; the API turns each into OpenAI's error envelope."""


class APIError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        self.headers: dict[str, str] = {}


class BadRequest(APIError):
    pass


class ModelNotFound(APIError):
    status = 404

    def __init__(self, model: str, served: str, aliases: tuple[str, ...] = ()):
        also = f" (also named {', '.join(repr(a) for a in aliases)})" if aliases else ""
        super().__init__(
            f"The model '{model}' does not exist; this cluster serves '{served}'{also}.",
            param="model",
            code="model_not_found",
        )


class Overloaded(APIError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, code="rate_limit_exceeded")
        self.headers = {"Retry-After": str(retry_after)}


class Unavailable(APIError):
    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message, code="no_replica_ready")
        self.headers = {"Retry-After": str(retry_after)}


class EngineFailure(APIError):
    status = 500
    type = "server_error"
