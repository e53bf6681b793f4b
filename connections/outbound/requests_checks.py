"""requests (2.33 up) asks `isinstance(value, SupportsItems)` and `isinstance(data, SupportsRead)` of every
request's headers, parameters, hooks and body: about twenty checks a request against typing's runtime-checkable
protocols, which Python 3.11 answers slowly (tens of microseconds each: a third of what a token refresh's HTTP
call costs this process, bench/profile_refresh.py). The same question ("does its class have this method?") is
asked here at the cost of an attribute lookup, under the names requests' modules look up at each call."""

from typing import Any

import requests.models
import requests.utils


class _MethodCheck(type):
    """isinstance(value, cls): `value` has the attribute `cls.method`, not None, as typing's runtime check of a
    protocol with one method answers it."""

    method: str

    def __instancecheck__(cls, instance: Any) -> bool:
        return getattr(instance, cls.method, None) is not None


class HasItems(metaclass=_MethodCheck):
    method = "items"


class HasRead(metaclass=_MethodCheck):
    method = "read"


def install() -> None:
    """Only where requests has these names (the versions that check against protocols)."""
    if hasattr(requests.utils, "_SupportsItems"):
        requests.utils._SupportsItems = HasItems
    if hasattr(requests.models, "_SupportsRead"):
        requests.models._SupportsRead = HasRead
