"""Runtime settings, read from the environment and `.env` (see .env.example)."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.domain.addresses import IPNetwork, parse_networks


class OwnerRetention(BaseModel):
    """One owner's retention (ASSAY_RETENTION_OWNERS): a key left out keeps the deployment's;
    null or 0 keeps that owner's records forever."""

    model_config = ConfigDict(extra="forbid")

    job_days: int | None = Field(default=None, ge=0)
    dataset_unused_days: int | None = Field(default=None, ge=0)


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
    # Request bodies other than uploads (JSON) are read whole: larger ones get 413 unread.
    max_json_body_bytes: int = Field(default=1024**2, gt=0)
    # Bytes each owner's datasets may take in all (their size_bytes summed); an upload that would
    # pass it is refused (413). 0: unlimited.
    owner_quota_bytes: int = Field(default=0, ge=0)
    # Rows a dataset may have: one with more ends `failed` at validation, naming the limit.
    # None: no limit.
    max_rows: int | None = Field(default=None, gt=0)
    # Write requests (POST, DELETE) an owner may make per minute, counted per API process; more
    # get 429 with Retry-After. 0: no limit.
    rate_limit_writes_per_minute: int = Field(default=600, ge=0)
    # Browser origins allowed to call the API (comma-separated, e.g. https://app.example.com);
    # empty: no CORS headers, so browsers refuse cross-site calls.
    cors_origins: str = ""
    worker_concurrency: int = Field(default=2, ge=1)
    # Memory of one worker process running a job: 3/8 DuckDB's, half numpy columns'.
    worker_memory_budget_mb: int = Field(default=1024, ge=128)
    task_soft_time_limit_s: int = Field(default=3600, gt=0)
    task_hard_time_limit_s: int = Field(default=3660, gt=0)
    heartbeat_interval_s: float = Field(default=0.5, gt=0)
    # A killed worker's job is requeued within timeout + reaper interval (~6 s). Beats came at
    # most 0.6 s apart while steps computed on both cores (tests/benchmarks/recovery.py).
    heartbeat_timeout_s: float = Field(default=5.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    reaper_interval_s: float = Field(default=1.0, gt=0)
    reaper_grace_s: float = Field(default=60.0, gt=0)
    # Export destinations (ASSAY_DESTINATIONS): a JSON object of name -> PostgreSQL URL. Secret:
    # never returned by the API nor logged (SecretStr masks them in reprs).
    destinations: dict[str, SecretStr] = Field(default_factory=dict)
    log_level: str = "INFO"
    # Logs as one JSON object a line (`json`) or as text; `auto`: text on a terminal, else JSON.
    log_format: Literal["auto", "json", "text"] = "auto"
    # Every /api/v1 request needs an API key. `assay serve` on a loopback address turns it off
    # unless this is set explicitly (see main.serve).
    auth_required: bool = True
    # Imports from URLs (POST /api/v1/datasets/import): networks they may reach although not
    # public (comma-separated CIDRs; empty: public addresses only), and how long they wait for a
    # connection and for the next bytes.
    import_allowed_networks: str = ""
    import_connect_timeout_s: float = Field(default=10.0, gt=0)
    import_read_timeout_s: float = Field(default=30.0, gt=0)
    # Retention, swept by the recovery loop: finished jobs (with their artifacts) this many days
    # after they finished, and datasets no job was created on for this many days. None: forever.
    retention_job_days: int | None = Field(default=None, gt=0)
    retention_dataset_unused_days: int | None = Field(default=None, gt=0)
    # Per-owner overrides, a JSON object: {"alice": {"job_days": 7, "dataset_unused_days": null}}.
    retention_owners: dict[str, OwnerRetention] = Field(default_factory=dict)

    @field_validator("import_allowed_networks")
    @classmethod
    def networks_parse(cls, value: str) -> str:
        parse_networks(value)  # a typo fails at start-up, naming the entry
        return value

    @property
    def allowed_import_networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.import_allowed_networks)

    # Webhooks (POST /api/v1/webhooks): networks their URLs may reach although not public (as
    # for imports), how long a receiver may take to answer, and attempts before giving up.
    webhook_allowed_networks: str = ""
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)

    @field_validator("webhook_allowed_networks")
    @classmethod
    def webhook_networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def allowed_webhook_networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.webhook_allowed_networks)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

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
