"""DOT customisations: accept any scope string, let the control API switch rotation off, and tell oauthlib 4 a
device code's status (which DOT 3.4's validator does not yet do)."""

from typing import Any

from oauth2_provider.models import get_device_grant_model
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import BaseScopes
from oauthlib.oauth2.rfc8628.grant_types.device_code import DeviceCodeGrant

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

    def validate_device_code(self, client_id, code, request, *args, **kwargs) -> str | None:
        """RFC 8628 3.5 by the device grant's state in DOT's table; an authorized one is used up at once."""
        Grant = get_device_grant_model()
        grant = Grant.objects.filter(client_id=client_id, device_code=code).first()
        if grant is None:
            return None
        if grant.status == Grant.AUTHORIZATION_PENDING and grant.is_expired():
            return DeviceCodeGrant.DEVICE_CODE_EXPIRED
        statuses = {
            Grant.AUTHORIZATION_PENDING: DeviceCodeGrant.DEVICE_CODE_PENDING,
            Grant.DENIED: DeviceCodeGrant.DEVICE_CODE_DENIED,
            Grant.EXPIRED: DeviceCodeGrant.DEVICE_CODE_EXPIRED,
        }
        if grant.status != Grant.AUTHORIZED:
            return statuses.get(grant.status)
        request.user, request.scopes = grant.user, (grant.scope or "read").split()
        Grant.objects.filter(pk=grant.pk).update(status=Grant.EXPIRED)
        return DeviceCodeGrant.DEVICE_CODE_AUTHORIZED
