"""DOT customisations: accept any scope string, and let the control API switch rotation off."""

from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import BaseScopes

from tests.authserver.models import ServerState


class _AnyScopeDescriptions(dict):
    """Scope name -> description; an unknown scope is described by its own name."""

    def __missing__(self, key: str) -> str:
        return key


class AnyScopes(BaseScopes):
    """Tests ask for provider-like scopes (api, refresh_token, offline_access, openid, ...)."""

    known = ("read", "write", "api", "refresh_token", "offline_access", "openid")

    def get_all_scopes(self) -> dict[str, str]:
        return _AnyScopeDescriptions({s: s for s in self.known})

    def get_available_scopes(self, application=None, request=None, *args: Any, **kwargs: Any):
        return list(self.known)

    def get_default_scopes(self, application=None, request=None, *args: Any, **kwargs: Any):
        return ["read"]


class Validator(OAuth2Validator):
    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs) -> bool:
        # Any non-empty printable scope token is granted as asked; oauthlib echoes it back.
        return all(s and s.isprintable() and " " not in s for s in scopes)

    def rotate_refresh_token(self, request) -> bool:
        # POST /_control/token_options {"omit_refresh_token_on_refresh": true} turns it off.
        if ServerState.get().omit_refresh_token_on_refresh:
            return False
        return super().rotate_refresh_token(request)
