"""The API process never imports the model-fitting libraries: building the app, serving the
processors' schemas and validating their steps leave them out of sys.modules.

Each check runs in a fresh interpreter (`python -c`), so modules imported by earlier tests
in this process cannot hide or fake an import.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

FORBIDDEN = [
    "statsmodels",
    "sklearn",
    "stepmix",
    "prince",
    "matplotlib",
    "h3",
    "scipy.stats",
    "scipy.optimize",
]

# Prints the forbidden modules loaded, as JSON, after the code before it ran.
REPORT = f"""
import json, sys
forbidden = {FORBIDDEN!r}
loaded = sorted(
    name for name in sys.modules
    if any(name == f or name.startswith(f + ".") for f in forbidden)
)
print(json.dumps(loaded))
"""

FAKE_APP = """
from fastapi.testclient import TestClient
from api.app import create_app
from schemas.domain.records import DEFAULT_OWNER, ColumnInfo, KeyScope
from schemas.settings import Settings
from services.adapters.wakeups.polling import PollingJobWakeups
from services.processing.processors.registry import PROCESSORS, validate_step
from tests.fakes import FakeContext, FakeQueue, FakeStorage, FakeUnitOfWork
from use_cases.keys import create_key

uow = FakeUnitOfWork()
context = FakeContext(
    settings=Settings(data_dir=DATA_DIR),
    new_uow=lambda: uow,
    datasets_storage=FakeStorage(),
    results_storage=FakeStorage(),
    queue=FakeQueue(),
)
_, secret = create_key(uow, owner_id=DEFAULT_OWNER, scope=KeyScope.admin)
with TestClient(create_app(context, PollingJobWakeups())) as client:
    response = client.get(
        "/api/v1/processors", headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 200, response.text
    names = {p["name"] for p in response.json()}
    assert "latent_classes" in names, names
# What POST /jobs does with a step: parse its params, check its columns.
columns = [ColumnInfo(name=f"i{j}", type="integer", null_count=0) for j in range(3)]
columns.append(ColumnInfo(name="color", type="string", null_count=0))
validate_step(
    "latent_classes", {"columns": ["i0", "i1", "color"], "n_classes": 2}, columns
)
for name, processor in PROCESSORS.items():
    processor.params_model.model_json_schema()
"""

REAL_APP = """
import main
app = main.create_api()
"""


def loaded_after(code: str, tmp_path: Path) -> list[str]:
    """The forbidden modules a fresh interpreter holds after running `code`."""
    root = Path(__file__).resolve().parents[2]
    prelude = f"DATA_DIR = {str(tmp_path / 'data')!r}\n"
    env = {**os.environ, "ASSAY_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", prelude + code + REPORT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_building_the_app_and_checking_steps_imports_no_fitting_library(tmp_path: Path) -> None:
    assert loaded_after(FAKE_APP, tmp_path) == []


def test_the_api_factory_imports_no_fitting_library(tmp_path: Path) -> None:
    assert loaded_after(REAL_APP, tmp_path) == []


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    """The subprocess check itself works: a fitting library imported is reported."""
    loaded = loaded_after("import stepmix\n", tmp_path)
    assert "stepmix" in loaded and "sklearn" in loaded
