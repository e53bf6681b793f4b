"""Control Room's models, one module a subject; imported here so that Django and the code find them in one place."""

from connections.models.access import BotAccount, BotKey, Role, sha256_digest
from connections.models.connection import FEATURE_PERMISSIONS, Connection, ConnectionStatus, TokenAccess, TokenType
from connections.models.flows import AuthorizationRequest, DeviceAuthorization
from connections.models.people import AuthorizationAsk, IdentityProviderGroup, PersonIdentity
from connections.models.records import (
    AnswerVersion,
    AuditEvent,
    BeatHeartbeat,
    CredentialWarning,
    FailedAuthenticationWindow,
    TokenChange,
    WebhookEndpoint,
)
from connections.models.token import OAuthToken, TokenState, token_valid_for

__all__ = [
    "FEATURE_PERMISSIONS",
    "AnswerVersion",
    "AuditEvent",
    "AuthorizationAsk",
    "AuthorizationRequest",
    "BeatHeartbeat",
    "BotAccount",
    "BotKey",
    "Connection",
    "ConnectionStatus",
    "CredentialWarning",
    "DeviceAuthorization",
    "FailedAuthenticationWindow",
    "IdentityProviderGroup",
    "OAuthToken",
    "PersonIdentity",
    "Role",
    "TokenAccess",
    "TokenChange",
    "TokenState",
    "TokenType",
    "WebhookEndpoint",
    "sha256_digest",
    "token_valid_for",
]
