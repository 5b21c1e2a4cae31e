"""`shiptrack serve` with the development JWT key serves this machine only, whatever
ENVIRONMENT says: the key is in the repository, so anyone could sign tokens with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.cli import PublicDevKey, main, refuse_dev_key_beyond_loopback
from backend.config import DEV_JWT_SECRET_KEY, Settings

# Not an address of this machine (TEST-NET-1): if `serve` ever started, binding would fail
# rather than expose anything.
UNREACHABLE_HOST = "192.0.2.1"
PRIVATE_KEY = "a private key of more than thirty-two bytes, for tests"


def settings_with(key: str, environment: str = "dev") -> Settings:
    return Settings.model_validate(
        {"environment": environment, "jwt_secret_key": key, "email_backend": "file"}
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.4.2", "::1", "[::1]", "localhost"])
def test_the_dev_key_serves_loopback(host: str) -> None:
    refuse_dev_key_beyond_loopback(settings_with(DEV_JWT_SECRET_KEY), host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "::ffff:10.0.0.5", "api.example"])  # noqa: S104
@pytest.mark.parametrize("environment", ["dev", "test"])
def test_the_dev_key_is_refused_beyond_loopback(host: str, environment: str) -> None:
    with pytest.raises(PublicDevKey, match=r"secrets\.token_urlsafe"):
        refuse_dev_key_beyond_loopback(settings_with(DEV_JWT_SECRET_KEY, environment), host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5"])  # noqa: S104
def test_a_private_key_serves_any_address(host: str) -> None:
    refuse_dev_key_beyond_loopback(settings_with(PRIVATE_KEY), host)


def test_serve_on_a_public_address_with_the_dev_key_exits_with_how_to_make_a_key(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    database_url: str,
    redis_url: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file of the checkout is read
    for name in ("JWT_SECRET_KEY", "HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENVIRONMENT", "dev")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--host", UNREACHABLE_HOST, "--port", "8765"])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"refusing to serve on {UNREACHABLE_HOST}" in error
    assert 'python -c "import secrets; print(secrets.token_urlsafe(48))"' in error
    assert DEV_JWT_SECRET_KEY not in error


def test_serve_reads_the_host_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.setenv("ENVIRONMENT", "dev")
    monkeypatch.setenv("HOST", UNREACHABLE_HOST)

    with pytest.raises(SystemExit) as exited:
        main(["serve"])

    assert exited.value.code == 2
    assert "JWT_SECRET_KEY" in capsys.readouterr().err
