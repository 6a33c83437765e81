"""The HTTP service over :class:`revstore.AsyncStore` (FastAPI; run it with ``revstore serve``)."""

from revstore.service.app import app_factory, create_app
from revstore.service.settings import Settings

__all__ = ["Settings", "app_factory", "create_app"]
