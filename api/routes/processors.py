"""The processor catalogue: what a job step may run, with its params schema."""

from fastapi import APIRouter

from api.openapi import errors
from schemas.api import ProcessorOut
from services.processing.processors.registry import PROCESSORS

router = APIRouter(prefix="/api/v1/processors", tags=["processors"])


@router.get("", responses=errors(401, 503))
def list_processors() -> list[ProcessorOut]:
    """Every processor with its description, params JSON Schema and the artifacts it writes."""
    return [
        ProcessorOut(
            name=p.name,
            description=p.description,
            params_schema=p.params_model.model_json_schema(),
            artifacts=p.artifacts,
        )
        for p in PROCESSORS.values()
    ]
