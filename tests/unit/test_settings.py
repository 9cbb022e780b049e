"""Settings: every one is documented, and the embedded defaults need no service."""

import re
from pathlib import Path

from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_documents_every_setting():
    text = (ROOT / ".env.example").read_text()
    documented = {name.lower() for name in re.findall(r"^#?\s*ASSAY_([A-Z0-9_]+)=", text, re.M)}
    assert documented == set(Settings.model_fields)


def test_nothing_set_means_sqlite_and_the_filesystem_broker_in_the_data_folder(tmp_path: Path):
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'assay.db'}"
    assert settings.resolved_broker_url == "filesystem://"
    assert settings.storage_backend == "local"
    assert settings.objects_dir.is_relative_to(tmp_path.resolve())


def test_the_worker_memory_budget_is_split_between_duckdb_and_numpy_columns():
    from services.processing.processors.duck import parse_size
    from workers.limits import compute_limits

    limits = compute_limits(Settings(_env_file=None, worker_memory_budget_mb=1024))
    assert (limits.memory_limit, limits.batch_memory_bytes) == ("384MiB", 512 * 1024**2)
    smaller = compute_limits(Settings(_env_file=None, worker_memory_budget_mb=256))
    assert parse_size(smaller.memory_limit) + smaller.batch_memory_bytes <= 256 * 1024**2


def test_a_worker_gives_ingest_half_its_memory_budget_and_steps_three_eighths():
    from workers.limits import compute_limits, ingest_limits

    settings = Settings(worker_memory_budget_mb=512)
    assert ingest_limits(settings).memory_limit == "256MiB"
    assert ingest_limits(settings).memory_budget_mb == 512  # the ceiling of its child process
    assert compute_limits(settings).memory_limit == "192MiB"
