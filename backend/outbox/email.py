"""Emails: Jinja2 templates with a text and an HTML part, sent over SMTP or written to a folder."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from backend.config import Settings

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates" / "email"


class EmailRenderer:
    """`<name>.txt` starts with a `Subject:` line; `<name>.html` is the HTML part."""

    def __init__(self, public_base_url: str) -> None:
        self._environment = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,  # a missing variable is a bug, not an empty string
            keep_trailing_newline=True,
        )
        self._base_url = public_base_url.rstrip("/")

    def render(
        self,
        template: str,
        to: str,
        context: dict[str, Any],
        *,
        sender: str,
        message_id: uuid.UUID,
        written_at: datetime,
    ) -> EmailMessage:
        variables = {**context, "base_url": self._base_url}
        text = self._environment.get_template(f"{template}.txt").render(variables)
        subject_line, _, body = text.partition("\n")
        if not subject_line.startswith("Subject: "):
            raise ValueError(f"email template {template}.txt must start with 'Subject: '")
        html = self._environment.get_template(f"{template}.html").render(variables)

        message = EmailMessage()
        message["From"] = sender
        message["To"] = to
        message["Subject"] = subject_line.removeprefix("Subject: ").strip()
        # Stable per outbox row, so a resend after a crash is recognisably the same message.
        message["Message-ID"] = f"<{message_id.hex}@shiptrack>"
        # When the change behind it happened: the same on every retry, like the Message-ID.
        message["Date"] = format_datetime(written_at)
        message.set_content(body.lstrip("\n"))
        message.add_alternative(html, subtype="html")
        return message


class EmailSender(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpSender:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, message: EmailMessage) -> None:
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            use_tls=settings.smtp_security == "tls",
            start_tls=settings.smtp_security == "starttls",
            timeout=settings.smtp_timeout_seconds,
        )


class FolderSender:
    """Development: every message becomes an .eml file to open, plus one log line."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    async def send(self, message: EmailMessage) -> None:
        sent_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self._folder / f"{sent_at}-{message['Message-ID'].strip('<>').split('@')[0]}.eml"
        await asyncio.to_thread(self._write, path, message.as_bytes())
        logger.info("email to %s: %s (%s)", message["To"], message["Subject"], path)

    def _write(self, path: Path, content: bytes) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def email_sender(settings: Settings) -> EmailSender:
    if settings.email_backend == "smtp":
        return SmtpSender(settings)
    return FolderSender(settings.data_dir / "mail")
