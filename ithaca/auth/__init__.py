"""Client authentication (what a route's `authentication` asks of connecting clients), the
hba_file check before routing, and auth_query secret lookup."""

from .client import NO_TLS, AuthError, TlsInfo, authenticate_client, password_failed
from .hba import HbaError, HbaRefused, HbaRules, hba_cache, load_hba, parse_hba
from .query import AuthQueryFailed, fetch_secret

__all__ = [
    "NO_TLS",
    "AuthError",
    "AuthQueryFailed",
    "HbaError",
    "HbaRefused",
    "HbaRules",
    "TlsInfo",
    "authenticate_client",
    "fetch_secret",
    "hba_cache",
    "load_hba",
    "parse_hba",
    "password_failed",
]
