from django.contrib.auth.views import LoginView
from django.urls import include, path

from tests.authserver import holds, views

urlpatterns = [
    # Our wrappers come before DOT's include so they win for these three paths.
    path("o/token/", views.token, name="token"),
    path("o/device-authorization/", views.DeviceAuthorizationView.as_view(), name="device-authorization"),
    path("o/refresh/", views.token, {"at_refresh_url": True}, name="refresh"),
    path("o/revoke_token/", views.revoke, name="revoke-token"),
    path("o/introspect/", views.introspect, name="introspect"),
    path("o/.well-known/openid-configuration", views.discovery, name="discovery"),
    path(".well-known/oauth-authorization-server/o", views.discovery, {"kind": "oauth"}, name="oauth-metadata"),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("api/me", views.MeView.as_view(), name="me"),
    path("_control/health", views.health),
    path("_control/clients", views.clients),
    path("_control/users", views.users),
    path("_control/fault", views.fault),
    path("_control/token_extra", views.token_extra),
    path("_control/token_options", views.token_options),
    path("_control/discovery", views.discovery_document),
    path("_control/stats", views.stats),
    path("_control/grants", views.grants),
    path("_control/reset", views.reset),
    # OpenID Provider (tests.authserver.openid)
    path("_control/id_token_fault", views.openid_id_token_fault),
    path("_control/openid_client", views.openid_client),
    path("_control/user_groups", views.openid_user_groups),
    path("_control/client_secret", views.client_secret),
    # Hold-until-released (tests/authserver/holds.py)
    path("_control/hold", views.control("POST")(holds.hold_view)),
    path("_control/held", views.control("POST")(holds.held_view)),
    path("_control/release", views.control("POST")(holds.release_view)),
]
