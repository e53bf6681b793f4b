"""manage.py demo_provider (make demo) refuses where it must, before starting anything: DEBUG off, a port taken,
no administrator to act as. The whole walk, the README's "Try it without a real provider", is a browser test:
tests/e2e/test_try_it_demo.py."""

import socket

import pytest
from django.core.management import CommandError, call_command

from connections.config.demo import demo_connections_set_up
from connections.config.demo_provider import DemoProvider
from connections.errors import DemoProviderError
from connections.models import Connection

pytestmark = pytest.mark.django_db


def test_it_refuses_with_debug_off(settings, tmp_path):
    settings.DEBUG, settings.VAR_DIR = False, tmp_path
    with pytest.raises(CommandError, match="for development only, and DEBUG is off"):
        call_command("demo_provider", port=1)
    assert not (tmp_path / "demo-provider").exists()


def test_it_says_when_its_port_is_taken(settings, tmp_path):
    settings.DEBUG, settings.VAR_DIR = True, tmp_path
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"Port {port} on 127.0.0.1 is taken"):
            call_command("demo_provider", port=port)


def test_it_needs_an_administrator_to_act_as(tmp_path):
    provider = DemoProvider(folder=tmp_path, port=1)  # never started: the check comes first
    with pytest.raises(DemoProviderError, match="No administrator yet: start Control Room with make run first"):
        demo_connections_set_up(provider=provider)
    assert not Connection.objects.exists()
