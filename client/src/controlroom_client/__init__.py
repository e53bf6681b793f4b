"""Control Room's client for bots: a valid access token for a connection, from one call.

from controlroom_client import ControlRoom, ControlRoomAuth

token = ControlRoom().token("salesforce-prod")                    # CONTROLROOM_URL, CONTROLROOM_KEY
requests.get(api_url, auth=ControlRoomAuth("salesforce-prod"))   # 401: one forced refresh and a retry
"""

from controlroom_client._version import __version__
from controlroom_client.auth import ControlRoomAuth
from controlroom_client.client import ControlRoom
from controlroom_client.errors import (
    ApiTimeout,
    ApiUnreachable,
    BadRequest,
    ConfigurationError,
    ControlRoomError,
    ControlRoomUnavailable,
    ControlRoomUnreachable,
    Forbidden,
    InvalidKey,
    InvalidResponse,
    NotConfigured,
    NotConnected,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    ReauthorizationRequired,
    RefreshBackoff,
    TemporaryError,
)
from controlroom_client.token import Token

__all__ = [
    "ApiTimeout",
    "ApiUnreachable",
    "BadRequest",
    "ConfigurationError",
    "ControlRoom",
    "ControlRoomAuth",
    "ControlRoomError",
    "ControlRoomUnavailable",
    "ControlRoomUnreachable",
    "Forbidden",
    "InvalidKey",
    "InvalidResponse",
    "NotConfigured",
    "NotConnected",
    "NotFound",
    "ProviderUnavailable",
    "RateLimited",
    "ReauthorizationRequired",
    "RefreshBackoff",
    "TemporaryError",
    "Token",
    "__version__",
]
