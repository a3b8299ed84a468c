"""Declare the detect routes' error answers, in their real shape, in the OpenAPI spec.

BentoML documents every API with 400/404/500 in its own error shape ({"error": ...}). Ours
answer in the legacy shape (serving.schemas.ErrorResponse) and also with 401, 408, 413, 415,
422, 429 and 503; clients and schemathesis should see that in /docs.json."""

from __future__ import annotations

from typing import Any

from serving.schemas import ErrorResponse

ERROR_STATUSES: dict[int, str] = {
    400: "Bad request: no file, an empty or corrupt image, a malformed form",
    401: "API key missing or wrong (only when DEEPFAKE_API_KEY is set)",
    404: "Not found",
    408: "The upload did not complete in time",
    413: "Upload over the byte limit, or image over the pixel limit",
    415: "Not an image in a supported format",
    422: "No face found and require_face was asked for",
    429: "Rate limited (only when DEEPFAKE_RATE_LIMITS is set); see Retry-After",
    500: "A fault of the server's own",
    503: "At capacity (SERVICE_OVERLOADED) or the model cannot serve (MODEL_UNAVAILABLE); see Retry-After",
}


def document_errors(service_name: str, routes: tuple[str, ...]) -> None:
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import MediaType, Reference, Response, Schema

    if getattr(openapi.generate_spec, "_documents_errors", False):
        return
    generate = openapi.generate_spec
    reference = Reference("#/components/schemas/ErrorResponse")

    def generate_spec(svc: Any, **kwargs: Any) -> Any:
        spec = generate(svc, **kwargs)
        if svc.name != service_name:
            return spec
        spec.components.setdefault("schemas", {})["ErrorResponse"] = Schema(
            **ErrorResponse.model_json_schema()
        )
        for route in routes:
            responses = spec.paths[route].post["responses"]
            for status, description in ERROR_STATUSES.items():
                responses[status] = Response(
                    description=description, content={"application/json": MediaType(schema=reference)}
                )
        return spec

    generate_spec._documents_errors = True  # type: ignore[attr-defined]
    openapi.generate_spec = generate_spec
