"""Upstream credentials as declarative strategies in a provider spec's `api.auth`.

Strategies (the schema's `api.auth` documents every field):

- `api_key`: a static key from an env variable, sent as a header, a bearer token or a query
  parameter (folded into the spec's headers/URL at load; the plain `api.headers` way still works).
- `oauth_pkce`: browser sign-in (authorization code + PKCE, a local callback), refreshed with the
  refresh token.
- `device_code`: a code shown to the user, then polling (RFC 8628).
- `client_credentials`: the OAuth 2.0 client credentials grant (RFC 6749 section 4.4), run by the
  engine on the first request that needs a token (no sign-in), the token kept in memory.
- `exchange` (with any of them): the long-lived token is traded at a URL for a short-lived one,
  again shortly before it expires.

`gaud-engine login/logout/status` drive sign-in; `CredentialManager.access_token(spec)` is what a
request needs; tokens are sealed at rest by `vault.py` and never logged.
"""

from ..spec.credentials import SIGN_IN_TYPES, AuthSpec, ExchangeSpec, compile_auth
from .flows import OAuthError, TokenSet, pkce_pair
from .manager import CredentialManager
from .vault import FernetVault, KeyringVault, Vault, VaultError, key_file_for, open_vault

__all__ = [
    "SIGN_IN_TYPES",
    "AuthSpec",
    "CredentialManager",
    "ExchangeSpec",
    "FernetVault",
    "KeyringVault",
    "OAuthError",
    "TokenSet",
    "Vault",
    "VaultError",
    "compile_auth",
    "key_file_for",
    "open_vault",
    "pkce_pair",
]
