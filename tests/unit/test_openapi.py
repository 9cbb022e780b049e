"""The OpenAPI document describes what the API accepts and returns; /docs works offline."""

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.processing.processors.registry import PROCESSORS

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
WRITES = {"post", "delete", "put", "patch"}


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_upload_documents_its_multipart_fields(document):
    body = document["paths"]["/api/v1/datasets"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"]
    assert schema["properties"]["file"] == schema["properties"]["file"] | {
        "type": "string",
        "format": "binary",
    }
    assert schema["properties"]["name"]["maxLength"] == 255
    assert set(schema["properties"]["format"]["enum"]) == {"csv", "json", "ndjson", "parquet"}
    assert "pandas" in schema["properties"]["null_values"]["description"]


def test_job_steps_are_a_union_of_the_registered_processors(document):
    schemas = document["components"]["schemas"]
    body = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobCreate"
    }
    steps = schemas["JobCreate"]["properties"]["steps"]
    assert (steps["minItems"], steps["maxItems"]) == (1, 50)
    union = steps["items"]
    assert union["discriminator"]["propertyName"] == "processor"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == set(PROCESSORS)
    assert [item["$ref"] for item in union["oneOf"]] == [mapping[name] for name in PROCESSORS]
    for name, processor in PROCESSORS.items():
        variant = schemas[mapping[name].rsplit("/", 1)[1]]
        assert variant["properties"]["processor"]["const"] == name
        params_ref = variant["properties"]["params"]["$ref"]
        params = schemas[params_ref.rsplit("/", 1)[1]]
        expected = processor.params_model.model_json_schema()
        assert set(params["properties"]) == set(expected["properties"])
        assert params.get("required", []) == expected.get("required", [])
        # Params that can all be left out make `params` optional, as the API accepts.
        assert ("params" in variant["required"]) == bool(expected.get("required"))


def test_step_validation_and_its_error_paths_are_unchanged(client: TestClient):
    uploaded = client.post("/api/v1/datasets", files={"file": ("d.csv", b"a\n1\n")}).json()
    cases = [
        ({"processor": "nope"}, "steps[0].processor"),
        ({"processor": "metrics", "params": {"columns": [1]}}, "steps[0].params.columns[0]"),
        ({"processor": "anomalies", "params": {"method": "sideways"}}, "steps[0].params.method"),
        ({"processor": "normalize", "params": {"bogus": 1}}, "steps[0].params.bogus"),
    ]
    for step, field in cases:
        response = client.post(
            "/api/v1/jobs",
            json={"dataset_id": uploaded["id"], "steps": [{"processor": "metrics"}, step]},
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_params"
        assert error["details"]["field"] == field.replace("steps[0]", "steps[1]")
    for steps in ([], [{"processor": "metrics"}] * 51):
        response = client.post("/api/v1/jobs", json={"dataset_id": uploaded["id"], "steps": steps})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"]["errors"][0]["location"] == ["body", "steps"]
    accepted = client.post(
        "/api/v1/jobs",
        json={"dataset_id": uploaded["id"], "steps": [{"processor": "metrics", "extra": 1}]},
    )
    assert accepted.status_code == 202, accepted.text


def test_every_error_response_carries_the_error_body(document):
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if (path, status) == ("/ready", "503"):  # the checks, naming the one that failed
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/HealthOut"
                }
            elif int(status) >= 400:
                content = response.get("content", {})
                assert list(content) == ["application/json"], (method, path, status)
                assert content["application/json"]["schema"] == ERROR_REF, (method, path, status)


def test_api_routes_document_auth_and_write_routes_their_limits(document):
    for path, method, operation in operations(document):
        if not path.startswith("/api/v1/"):
            continue
        responses = operation["responses"]
        assert {"401", "503"} <= set(responses), (method, path)
        assert "WWW-Authenticate" in responses["401"]["headers"]
        if method in WRITES:
            assert {"403", "429"} <= set(responses), (method, path)
            assert "Retry-After" in responses["429"]["headers"]
        else:
            assert "429" not in responses, (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
    upload = document["paths"]["/api/v1/datasets"]["post"]["responses"]
    assert {"400", "413", "415", "422"} <= set(upload)


def test_downloads_and_the_event_stream_document_their_content_types(document):
    paths = document["paths"]
    content = paths["/api/v1/datasets/{dataset_id}/content"]["get"]["responses"]
    assert set(content["200"]["content"]) == {
        "text/csv",
        "application/json",
        "application/x-ndjson",
        "application/vnd.apache.parquet",
        "application/octet-stream",  # until validated
    }
    artifact = paths["/api/v1/jobs/{job_id}/artifacts/{name}"]["get"]["responses"]
    assert "application/octet-stream" in artifact["200"]["content"]
    assert "text/csv" in artifact["200"]["content"]
    assert "Location" in artifact["307"]["headers"]
    stream = paths["/api/v1/jobs/{job_id}/stream"]["get"]["responses"]
    assert list(stream["200"]["content"]) == ["text/event-stream"]


def test_list_limits_are_bounded_and_documented(document):
    for path, method, operation in operations(document):
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "limit":
                schema = parameter["schema"]
                assert schema["minimum"] == 1 and schema["maximum"] <= 1000, (method, path)


def test_a_405_names_the_allowed_methods(client: TestClient):
    response = client.put("/api/v1/datasets")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_nothing_from_another_host(client: TestClient, page: str):
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset
