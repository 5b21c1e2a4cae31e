"""`.env.example` documents every setting and works as a `.env` as it stands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.config import Settings

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def documented_names() -> set[str]:
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert documented_names() == {name.upper() for name in Settings.model_fields}


def test_example_as_dotenv_gives_embedded_dev_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in documented_names():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=ENV_EXAMPLE)
    assert settings.environment == "dev"
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.uses_embedded_services()
    assert settings.cors_origins == []
    assert settings.effective_log_format == "console"
