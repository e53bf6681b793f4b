from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from connections.endpoint import views as endpoint_views
from connections.ops import views as ops_views
from connections.people import views as people_views
from connections.web import views

# admin.site is Control Room's (controlroom.admin: titles, home page, app order).
urlpatterns = [
    path("", views.home, name="home"),
    # Admin pages that belong to no model, before the admin's own URLs (which would answer 404 for them).
    path("admin/outbound/", admin.site.admin_view(views.outbound_page), name="outbound"),
    path("admin/bots/", admin.site.admin_view(views.bots_page), name="bots_guide"),
    # People (connections.people): signing in with the identity provider, and out (of the admin too, so that the
    # provider's session ends with it).
    path("admin/logout/", people_views.sign_out),
    path("oidc/authenticate/", people_views.SignInStart.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", people_views.SignInCallback.as_view(), name="oidc_authentication_callback"),
    path("oidc/logout/", people_views.sign_out, name="oidc_logout"),
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            template_name="connections/login.html",
            extra_context={"title": "Sign in", "site_header": "Control Room", "site_title": "Control Room"},
        ),
        name="login",
    ),
    path("accounts/logout/", people_views.sign_out, name="logout"),
    path("oauth/connect/<slug:slug>/", views.oauth_connect, name="oauth_connect"),
    path("oauth/callback/", views.oauth_callback, name="oauth_callback"),
    path("oauth/device/<int:pk>/", views.device_authorization_page, name="device_authorization"),
    path("connections/mine/", views.my_connections, name="my_connections"),
    path("connections/mine/<slug:slug>/disconnect/", views.my_connection_disconnect, name="my_connection_disconnect"),
    path("api/v1/connections/<str:slug>/token", endpoint_views.connection_token, name="connection_token"),
    path("api/v1/connections/<str:slug>/proxy/", endpoint_views.connection_proxy, name="connection_proxy_root"),
    path("api/v1/connections/<str:slug>/proxy/<path:path>", endpoint_views.connection_proxy, name="connection_proxy"),
    path("livez", ops_views.livez, name="livez"),
    path("metrics", ops_views.metrics_view, name="metrics"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("healthz", ops_views.healthz, name="healthz"),
]
