"""The API process loads the event processors' params and checks without the fitting
libraries: they are imported by a running step only. (Only this package is imported here:
the registry's other families have their own checks.)"""

import json
import subprocess
import sys

HEAVY = ["scipy.stats", "statsmodels", "matplotlib", "h3", "sklearn", "pandas"]

SCRIPT = """
import json, sys
from schemas.domain.records import ColumnInfo
from services.processing.processors import events
columns = [ColumnInfo(name="at", type="timestamp", null_count=0),
           ColumnInfo(name="g", type="string", null_count=0),
           ColumnInfo(name="lat", type="float", null_count=0),
           ColumnInfo(name="lon", type="float", null_count=0)]
processors = {p.name: p for p in events.PROCESSORS}
for name, params in json.loads(sys.argv[1]).items():
    model = processors[name].params_model.model_validate(params)
    processors[name].check_columns(model, columns)
    processors[name].params_model.model_json_schema()
print(json.dumps(sorted(sys.modules)))
"""

STEPS = {
    "count_anomalies": {
        "timestamp_column": "at",
        "group_column": "g",
        "h3": {"lat_column": "lat", "lon_column": "lon", "resolution": 8},
    },
    "count_model": {"timestamp_column": "at", "group_column": "g", "features": ["trend"]},
    "count_comparison": {"timestamp_column": "at", "group_column": "g", "period": "year"},
}


def test_params_and_checks_import_no_fitting_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(STEPS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    modules = set(json.loads(out))
    events = {m for m in modules if m.startswith("services.processing.processors.events")}
    assert events  # the package was loaded
    loaded = {m for m in modules for heavy in HEAVY if m == heavy or m.startswith(heavy + ".")}
    assert not loaded, sorted(loaded)[:10]
