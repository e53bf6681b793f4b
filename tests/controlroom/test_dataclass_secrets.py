"""No secret reaches repr() or str() of a dataclass (DESIGN: Security): every field of a dataclass of Control Room
that is named like a secret is repr=False, and the ones that travel with a provider call print without theirs."""

import dataclasses
import importlib
import pkgutil
import re

import controlroom_client

import connections
from connections.endpoint.bot_keys import PresentedKey
from connections.oauth.answers import TokenResponse
from connections.oauth.client_auth import ClientConfig

SECRET_NAME = re.compile(r"secret|access_token|refresh_token|id_token|password|digest|private_key$|^key$|^answer$")


def _dataclasses() -> list[type]:
    found = []
    for package in (connections, controlroom_client):
        for module_info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".migrations" in module_info.name or ".management" in module_info.name or "__main__" in module_info.name:
                continue
            module = importlib.import_module(module_info.name)
            found += [
                value
                for value in vars(module).values()
                if dataclasses.is_dataclass(value) and isinstance(value, type) and value.__module__ == module.__name__
            ]
    return found


def test_every_field_named_like_a_secret_is_left_out_of_repr():
    classes = _dataclasses()
    assert len(classes) > 15  # the walk found them
    shown = [
        f"{cls.__module__}.{cls.__name__}.{field.name}"
        for cls in classes
        for field in dataclasses.fields(cls)
        if SECRET_NAME.search(field.name) and not field.name.startswith(("clear_", "token_type")) and field.repr
    ]
    assert shown == []


def test_a_client_configuration_a_token_answer_and_a_presented_key_print_without_their_secrets():
    config = ClientConfig(
        client_id="app", client_secret="s3cret-value", authorization_url="", token_url="", private_key="PEM-KEY"
    )
    answer = TokenResponse(
        access_token="at-value", refresh_token="rt-value", id_token="idt-value", token_type="Bearer", scope="",
        expires_in=60, extra={},
    )  # fmt: skip
    key = PresentedKey(key_id="abc", secret="key-secret")
    printed = repr(config) + str(config) + repr(answer) + str(answer) + repr(key)
    for secret in ("s3cret-value", "PEM-KEY", "at-value", "rt-value", "idt-value", "key-secret"):
        assert secret not in printed
