"""Client authentication (what a route's `authentication` asks of connecting clients)."""

from .client import AuthError, authenticate_client

__all__ = ["AuthError", "authenticate_client"]
