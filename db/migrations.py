"""Run the Alembic migrations from code (`assay migrate`, tests), from any working directory."""

from pathlib import Path

from alembic import command
from alembic.config import Config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the project's migrations, pointed at one database."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    # ConfigParser interpolates '%', which URL-encoded passwords contain.
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic").replace("%", "%%"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade_to_head(database_url: str) -> None:
    """Bring the database at `database_url` to the latest revision."""
    command.upgrade(alembic_config(database_url), "head")
