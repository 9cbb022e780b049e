"""What the OpenAPI document says beyond the route signatures: error bodies per status, the
multipart upload, file downloads, and job steps as a union of the registered processors.

The routes parse some requests themselves (the upload is streamed) and validate job steps in
the use case (so the 422 names `steps[0].params.columns[0]`); the document still has to
describe them, so clients, /docs and the schema fuzz test see what the API really accepts.
"""

from types import GenericAlias
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, TypeAdapter, create_model
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from schemas.api import NULL_VALUES_HELP, ErrorBody, JobCreate, StepIn
from services.processing.processors.registry import PROCESSORS

Responses = dict[int | str, dict[str, Any]]

ERROR_DESCRIPTIONS = {
    400: "Malformed request",
    401: "No valid API key (`Authorization: Bearer <key>`)",
    403: "The key's scope does not allow this",
    404: "Unknown id, or another owner's",
    409: "Conflict with the resource's state",
    413: "Too large: over the upload limit or the owner's storage quota",
    415: "Unsupported dataset format",
    422: "Invalid parameter; `details` names the field",
    429: "Too many write requests from this owner; retry after `Retry-After` seconds",
    503: "A dependency (database, storage, broker) is down; retry later",
}
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "The scheme to use", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "description": "Seconds until a write is accepted again",
            "schema": {"type": "integer"},
        }
    },
}
# What every /api/v1 route may answer: its key is checked (401) against the database (503).
READ = (401, 422, 503)
WRITE = (*READ, 403, 429)


def errors(*codes: int) -> Responses:
    """Responses for these error statuses, each with the JSON error body."""
    responses: Responses = {}
    for code in sorted(set(codes)):
        response: dict[str, Any] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]}
        if code in ERROR_HEADERS:
            response["headers"] = ERROR_HEADERS[code]
        responses[code] = response
    return responses


def json_errors(*codes: int) -> Responses:
    """`errors` for a route whose own responses are not JSON (FastAPI would document its
    errors in the route's media type): the error body's schema is named explicitly."""
    responses = errors(*codes)
    for response in responses.values():
        del response["model"]
        response["content"] = {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
        }
    return responses


# --- Uploads and downloads --------------------------------------------------------------------

BINARY = {"schema": {"type": "string", "format": "binary"}}


def upload_body(formats: list[str]) -> dict[str, Any]:
    """The multipart body of an upload, which the route parses itself (streamed to disk)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "The dataset file; its extension tells the "
                                "format unless `format` is given.",
                            },
                            "name": {
                                "type": "string",
                                "maxLength": 255,
                                "description": "Display name (default: the file name).",
                            },
                            "format": {
                                "type": "string",
                                "enum": formats,
                                "description": "The format, when the file name does not say it.",
                            },
                            "null_values": {
                                "type": "string",
                                "description": NULL_VALUES_HELP,
                            },
                        },
                    },
                    "encoding": {"file": {"contentType": "application/octet-stream"}},
                }
            },
        }
    }


def file_response(description: str, media_types: list[str]) -> Responses:
    """A 200 whose body is a file of one of these types (JSON files are any JSON value)."""
    content: dict[str, Any] = {
        media_type: {"schema": {}} if media_type == "application/json" else BINARY
        for media_type in media_types
    }
    return {200: {"description": description, "content": content}}


REDIRECT: Responses = {
    307: {
        "description": "Redirect to a presigned download URL (S3 storage)",
        "headers": {"Location": {"description": "The presigned URL", "schema": {"type": "string"}}},
    }
}
EVENT_STREAM: Responses = {
    200: {"description": "Server-Sent Events: `id`, `event` (the event type) and JSON `data`"}
}


# --- Job steps --------------------------------------------------------------------------------


class DocumentedAs:
    """Annotation: validate as the annotated type, document as `shown` in the JSON schema.

    Job steps are validated by the use case against the registry (keeping its error paths);
    the document shows what that validation accepts.
    """

    def __init__(self, shown: Any) -> None:
        self._shown = TypeAdapter(shown).core_schema

    def __get_pydantic_json_schema__(
        self, _: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(self._shown)


def step_model(name: str, params_model: type[BaseModel]) -> type[BaseModel]:
    """`{"processor": name, "params": <params_model>}`; params may be left out when optional."""
    required = any(field.is_required() for field in params_model.model_fields.values())
    params: Any = (params_model, ...) if required else (params_model, Field(default_factory=dict))
    processor: Any = Literal[name]
    return create_model(
        f"{name.title().replace('_', '')}Step",
        __config__=ConfigDict(title=f"{name} step"),
        processor=(processor, ...),
        params=params,
    )


def step_union() -> Any:
    """One schema per registered processor, discriminated on `processor`."""
    variants = tuple(step_model(p.name, p.params_model) for p in PROCESSORS.values())
    return Annotated[Union[variants], Field(discriminator="processor")]  # noqa: UP007


# The job request as validated (`schemas.api.JobCreate`: its use case checks each step against
# the registry), with its steps documented per processor under the same length limits.
_STEPS = JobCreate.model_fields["steps"]
_SHOWN_STEPS: Any = Annotated[(GenericAlias(list, step_union()), *_STEPS.metadata)]
JobCreateIn = create_model(
    "JobCreate",
    __base__=JobCreate,
    __doc__="A job: steps to run in order on one of the caller's datasets.",
    steps=(Annotated[list[StepIn], DocumentedAs(_SHOWN_STEPS)], _STEPS),
)
