"""Runtime settings, read from the environment and `.env` (see .env.example)."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASSAY_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".assay")
    database_url: str | None = None
    broker_url: str | None = None
    storage_backend: Literal["local", "s3"] = "local"

    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str = "us-east-1"
    s3_datasets_bucket: str = "datasets"
    s3_results_bucket: str = "job-results"

    queue_name: str = "assay"
    max_upload_bytes: int = Field(default=5 * 1024**3, gt=0)
    worker_concurrency: int = Field(default=2, ge=1)
    # Memory of one worker process running a job: 3/8 DuckDB's, half numpy columns'.
    worker_memory_budget_mb: int = Field(default=1024, ge=128)
    task_soft_time_limit_s: int = Field(default=3600, gt=0)
    task_hard_time_limit_s: int = Field(default=3660, gt=0)
    heartbeat_interval_s: float = Field(default=0.5, gt=0)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    reaper_interval_s: float = Field(default=15.0, gt=0)
    reaper_grace_s: float = Field(default=60.0, gt=0)
    log_level: str = "INFO"
    # Every /api/v1 request needs an API key. `assay serve` on a loopback address turns it off
    # unless this is set explicitly (see main.serve).
    auth_required: bool = True

    @property
    def resolved_database_url(self) -> str:
        """The configured database, or SQLite inside the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'assay.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """The configured broker, or Celery's filesystem transport inside the data folder."""
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def objects_dir(self) -> Path:
        return (self.data_dir / "objects").resolve()

    @property
    def tmp_dir(self) -> Path:
        return (self.data_dir / "tmp").resolve()
