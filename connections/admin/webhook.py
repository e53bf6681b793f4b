"""Lifecycle webhook endpoints in the admin: each with the events it wants and its own write-only secret, the last
delivery's status, and a Send test event button."""

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import path

from connections import errors
from connections.admin.permissions import PermissionMixin
from connections.http import signed_in_user
from connections.models import WebhookEndpoint
from connections.notify import webhooks
from connections.outbound import policy

if TYPE_CHECKING:  # fields as django-stubs types them (a name of its stubs only)
    from django.contrib.admin.options import _FieldGroups


class WebhookEndpointForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=list(webhooks.EVENTS.items()),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: all of them.",
    )
    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Signs each body (X-ControlRoom-Signature: sha256=<HMAC-SHA256 hex>). Stored encrypted, never shown "
        "again; leave blank to keep the stored one.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("name", "url", "events", "is_enabled")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        try:
            policy.check_url(url)  # https, or a host the operator allows; the private guard applies at delivery
        except errors.OutboundError as exc:
            raise forms.ValidationError(exc.message) from None
        return url

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if secret := cleaned.get("secret"):
            self.instance.secret = secret
        return cleaned


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(PermissionMixin, admin.ModelAdmin):
    form = WebhookEndpointForm
    change_form_template = "admin/connections/webhookendpoint/change_form.html"
    list_display = ("name", "url", "event_list", "is_enabled", "last_delivery_at", "last_status")
    readonly_fields = ("last_delivery_at", "last_status")
    actions = ["send_test_event"]

    def get_fields(self, request: HttpRequest, obj: WebhookEndpoint | None = None) -> "_FieldGroups":
        secret = ["secret"] if self.has_change_permission(request, obj) else []  # never shown to viewers
        return ["name", "url", "events", *secret, "is_enabled", "last_delivery_at", "last_status"]

    @admin.display(description="Events")
    def event_list(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.events) or "all"

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        webhooks.webhook_endpoint_delete(endpoint=obj, actor=signed_in_user(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:  # Django's "Delete selected": each audited
            webhooks.webhook_endpoint_delete(endpoint=endpoint, actor=signed_in_user(request))

    def get_urls(self) -> list:
        test = self.admin_site.admin_view(self.test_view)
        return [path("<int:object_id>/test/", test, name="connections_webhookendpoint_test"), *super().get_urls()]

    def test_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        if request.method != "POST" or not self.has_change_permission(request):
            return HttpResponse(status=405 if request.method != "POST" else 403)
        endpoint = get_object_or_404(WebhookEndpoint, pk=object_id)
        self._send_test(request, endpoint)
        return redirect("admin:connections_webhookendpoint_change", object_id)

    @admin.action(description="Send a test event", permissions=["change"])
    def send_test_event(self, request: HttpRequest, queryset: Any) -> None:
        for endpoint in queryset:
            self._send_test(request, endpoint)

    def _send_test(self, request: HttpRequest, endpoint: WebhookEndpoint) -> None:
        webhooks.event_emit(
            webhooks.TEST_EVENT, None, f"A test event sent by {request.user.get_username()}.", only=endpoint
        )
        messages.success(request, f"A test event was queued for {endpoint}: its delivery shows in Last delivery.")
