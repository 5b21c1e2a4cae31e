"""Server-rendered pages share one layout (backend/templates/base.html) and no external assets."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

SHARED_TEMPLATES = Path(__file__).parent / "templates"


def page_templates(own_folder: Path) -> Jinja2Templates:
    """Templates of one package, able to extend the shared layout."""
    return Jinja2Templates(directory=[own_folder, SHARED_TEMPLATES])
