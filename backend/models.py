"""Every table model, imported in one place so the metadata is complete for Alembic."""

from backend.accounts.models import Partner, Seller
from backend.db import metadata

__all__ = ["Partner", "Seller", "metadata"]
