"""A refresh's HTTP call goes through requests, whose checks of a request's headers, parameters and body against
typing's protocols are answered by connections.outbound.requests_checks instead (the same answers, without their
cost): here, that the answers are the same. (Kept with the engine's tests: the refresh is what it is for.)"""

import io

import pytest
import requests.models
import requests.utils
from requests._types import SupportsItems, SupportsRead
from requests.structures import CaseInsensitiveDict

from connections.outbound import policy, requests_checks


class ItemsSetToNone(dict):
    items = None  # type: ignore[assignment]


class ReadOfItsOwn:
    def __init__(self) -> None:
        self.read = lambda: b""


class KeysOnly:
    def keys(self) -> list[str]:
        return []


VALUES = [{}, [("a", "b")], (), None, "a=b", b"a=b", io.BytesIO(b"x"), CaseInsensitiveDict(), ItemsSetToNone()]
VALUES += [ReadOfItsOwn(), KeysOnly(), dict, object()]


def test_requests_asks_the_quick_checks_once_the_outbound_policy_is_loaded():
    assert policy.requests_checks is requests_checks
    assert (requests.utils._SupportsItems, requests.models._SupportsRead) == (
        requests_checks.HasItems,
        requests_checks.HasRead,
    )


@pytest.mark.parametrize("value", VALUES, ids=lambda value: type(value).__name__)
def test_the_quick_checks_answer_as_the_protocols_do(value):
    assert isinstance(value, requests_checks.HasItems) == isinstance(value, SupportsItems)
    assert isinstance(value, requests_checks.HasRead) == isinstance(value, SupportsRead)
