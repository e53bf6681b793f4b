import pytest

from providers.models import Provider
from providers.services import provider_catalog_read

pytestmark = pytest.mark.django_db


def test_provider_list_shows_every_type_with_its_placeholders(admin_client):
    page = admin_client.get("/admin/providers/provider/").content.decode()
    assert page.count('class="field-placeholder_list"') == Provider.objects.count() == len(provider_catalog_read())
    assert "&lt;yourinstance&gt;" in page and "&lt;tenant-id&gt;" in page
    assert "Microsoft Entra (SharePoint)" in page


def test_certified_presets_are_read_only(admin_client):
    okta = Provider.objects.get(slug="okta")
    page = admin_client.get(f"/admin/providers/provider/{okta.pk}/change/").content.decode()
    assert 'name="_save"' not in page and "https://&lt;yourinstance&gt;.okta.com/oauth2/v1/token" in page
    response = admin_client.post(f"/admin/providers/provider/{okta.pk}/change/", {"name": "Hacked"})
    assert response.status_code == 403
    assert admin_client.post(f"/admin/providers/provider/{okta.pk}/delete/", {"post": "yes"}).status_code == 403
    okta.refresh_from_db()
    assert okta.name == "Okta"


def _custom(**overrides: str) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "Acme IdP",
        "slug": "acme-idp",
        "token_url": "https://idp.acme.example/token",
        "authorization_url": "https://idp.acme.example/authorize",
        "grant_types": ["authorization_code", "client_credentials"],
        "client_auth_method": "body",
        "token_request_format": "form",
        "scope_separator": "",
        "extra_authorization_params": "{}",
    }
    data.update(overrides)
    return data


def test_custom_providers_are_created_and_edited_in_the_admin(admin_client):
    response = admin_client.post("/admin/providers/provider/add/", _custom())
    assert response.status_code == 302, response.context["adminform"].form.errors
    acme = Provider.objects.get(slug="acme-idp")
    assert not acme.is_certified and acme.client_auth_method == "body" and acme.scope_separator == " "
    response = admin_client.post(f"/admin/providers/provider/{acme.pk}/change/", _custom(name="Acme IdP v2"))
    assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.name == "Acme IdP v2"


def test_a_custom_provider_cannot_take_a_certified_slug(admin_client):
    response = admin_client.post("/admin/providers/provider/add/", _custom(slug="salesforce", name="Fake SF"))
    assert "belongs to a certified provider type" in response.content.decode()
    assert not Provider.objects.filter(name="Fake SF").exists()
