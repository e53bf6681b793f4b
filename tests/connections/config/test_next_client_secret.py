"""apply_config / export_config carry a next client secret by reference, as they carry the current one."""

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from connections.models import Connection

pytestmark = pytest.mark.django_db

FILE = """
connections:
  - name: Okta service
    provider: okta
    placeholders: {yourinstance: acme}
    grant_type: client_credentials
    client_id: okta-client
    client_secret_env: OKTA_SECRET
    next_client_secret_file: okta-next.secret
"""


def _apply(path: Path) -> str:
    out, err = StringIO(), StringIO()
    try:
        call_command("apply_config", str(path), stdout=out, stderr=err)
    except CommandError as exc:
        raise AssertionError(err.getvalue()) from exc
    return out.getvalue()


@pytest.fixture
def config(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("OKTA_SECRET", "okta-current")
    (tmp_path / "okta-next.secret").write_text("okta-next\n")
    path = tmp_path / "controlroom.yaml"
    path.write_text(FILE)
    return path


def test_a_next_secret_by_reference_is_stored_and_exported_by_reference(config):
    _apply(config)
    okta = Connection.objects.get(slug="okta-service")
    assert (okta.client_secret, okta.next_client_secret) == ("okta-current", "okta-next")
    # applied again: nothing changes
    assert "unchanged connection okta-service" in " ".join(_apply(config).split())

    out = StringIO()
    call_command("export_config", stdout=out)
    assert "okta-next" not in out.getvalue().replace("okta-service", "")
    (item,) = yaml.safe_load(out.getvalue())["connections"]
    assert item["next_client_secret_env"] == "OKTA_SERVICE_NEXT_CLIENT_SECRET"


def test_a_next_secret_promoted_since_stays_current_when_the_file_is_applied_again(config):
    # given the next secret applied, then promoted by its first success (the file still names it as next)
    _apply(config)
    Connection.objects.filter(slug="okta-service").update(
        client_secret="okta-next", next_client_secret="", previous_client_secret="okta-current"
    )
    config.write_text(FILE.replace("    client_secret_env: OKTA_SECRET\n", ""))  # the operator dropped the old one
    # when the file is applied again
    output = _apply(config)
    # then the promoted secret is current, and not next as well
    okta = Connection.objects.get(slug="okta-service")
    assert (okta.client_secret, okta.next_client_secret) == ("okta-next", ""), output


def test_a_next_secret_written_inline_is_refused(config):
    config.write_text(FILE.replace("next_client_secret_file: okta-next.secret", "next_client_secret: hunter2"))
    with pytest.raises(AssertionError, match="next_client_secret is written inline"):
        _apply(config)
    assert not Connection.objects.exists()
