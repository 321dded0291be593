"""Errors a request can end in, each with the HTTP status and OpenAI error fields the proxy answers with."""

from __future__ import annotations

from router.schemas import ErrorBody, ErrorResponse, RoutingRecord


class RoutingError(Exception):
    """A request the router could not serve; the message is safe to show to the caller."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorBody(message=str(self), type=self.type, param=self.param, code=self.code))


class InvalidRequestError(RoutingError, ValueError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFoundError(InvalidRequestError):
    status = 404
    code = "model_not_found"


class PromptTooLargeError(InvalidRequestError):
    status = 413
    code = "prompt_too_large"


class BudgetExceededError(RoutingError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class BudgetUnavailableError(RoutingError):
    """A budgeted request while the shared budget store is unreachable and this replica's allowance is spent."""

    status = 503
    type = "server_error"
    code = "budget_store_unavailable"


class UpstreamError(RoutingError):
    """Every attempt failed (or one failed in a way no other model can fix); ``record`` lists the attempts."""

    type = "upstream_error"
    code = "upstream_failed"

    def __init__(self, message: str, record: RoutingRecord, status: int = 502) -> None:
        super().__init__(message)
        self.record = record
        self.status = status
        if status == 400:
            self.type, self.code = "invalid_request_error", "upstream_rejected_request"

    def body(self) -> ErrorResponse:
        response = super().body()
        response.error.attempts = self.record.attempts
        return response
