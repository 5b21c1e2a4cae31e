"""Emails: Jinja2 templates with a text and an HTML part, sent over SMTP or written to a folder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
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
            auto_reload=False,  # templates ship with the code: no stat() per email
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

    async def aclose(self) -> None: ...


# An SMTP connection idle for longer is closed rather than used again: servers drop idle
# clients after a while (RFC 5321 asks them to wait at least 5 minutes; some wait less).
SMTP_IDLE_SECONDS = 15.0


class SmtpSender:
    """Sends over SMTP, keeping connections open between messages: connecting, EHLO, STARTTLS
    and AUTH are paid once per connection, not once per message. One message at a time per
    connection; as many connections as messages sent at once (the worker's email lane)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # Free connections, the most recently used last, with when each was last used.
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._hostname: str | None = None

    async def send(self, message: EmailMessage) -> None:
        client = self._take_idle()
        if client is not None:
            try:
                await client.send_message(message)
            except aiosmtplib.SMTPServerDisconnected:
                # The server hung up on an idle connection: try once on a new one.
                client.close()
            except BaseException:
                client.close()
                raise
            else:
                self._give_back(client)
                return
        client = await self._connect()
        try:
            await client.send_message(message)
        except BaseException:
            # After a refusal or an error, the connection's state is unknown: never reused.
            client.close()
            raise
        self._give_back(client)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await client.quit()
            client.close()

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            client, last_used = self._idle.pop()
            if client.is_connected and now - last_used < SMTP_IDLE_SECONDS:
                return client
            client.close()
        return None

    async def _local_hostname(self) -> str:
        """This machine's name for EHLO, looked up once: left to aiosmtplib, it is looked up
        again (in a thread) on every connect."""
        if self._hostname is None:
            self._hostname = await asyncio.to_thread(socket.getfqdn)
        return self._hostname

    def _give_back(self, client: aiosmtplib.SMTP) -> None:
        self._idle.append((client, time.monotonic()))

    async def _connect(self) -> aiosmtplib.SMTP:
        settings = self._settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        client = aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            local_hostname=await self._local_hostname(),
            username=settings.smtp_username,
            password=password,
            use_tls=settings.smtp_security == "tls",
            start_tls=settings.smtp_security == "starttls",
            timeout=settings.smtp_timeout_seconds,
        )
        try:
            await client.connect()
        except BaseException:
            client.close()
            raise
        return client


class FolderSender:
    """Development: every message becomes an .eml file to open, plus one log line."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    async def send(self, message: EmailMessage) -> None:
        sent_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self._folder / f"{sent_at}-{message['Message-ID'].strip('<>').split('@')[0]}.eml"
        await asyncio.to_thread(self._write, path, message.as_bytes())
        logger.info("email to %s: %s (%s)", message["To"], message["Subject"], path)

    async def aclose(self) -> None:
        pass

    def _write(self, path: Path, content: bytes) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def email_sender(settings: Settings) -> EmailSender:
    if settings.email_backend == "smtp":
        return SmtpSender(settings)
    return FolderSender(settings.data_dir / "mail")
