"""JsonView makes Django's CSRF check itself (so that its refusal is JSON): a subclass
the project marks ``csrf_exempt`` the Django way is still exempt."""

from __future__ import annotations

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt

from streaming_app.views import JsonView


class Checked(JsonView):
    def post(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ok": True})


@method_decorator(csrf_exempt, name="dispatch")
class Webhook(Checked):
    """A view its project exempts (it authenticates its callers otherwise)."""


class AsyncChecked(JsonView):
    async def post(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"ok": True})


@method_decorator(csrf_exempt, name="dispatch")
class AsyncWebhook(AsyncChecked):
    pass


urlpatterns = [
    path("checked/", Checked.as_view()),
    path("webhook/", Webhook.as_view()),
    path("async-checked/", AsyncChecked.as_view()),
    path("async-webhook/", AsyncWebhook.as_view()),
]


@override_settings(ROOT_URLCONF=__name__)
@pytest.mark.parametrize("prefix", ["", "async-"])
def test_a_json_view_the_project_exempts_is_not_checked(prefix: str):
    client = Client(enforce_csrf_checks=True)
    refused = client.post(f"/{prefix}checked/")
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("CSRF verification failed")
    exempt = client.post(f"/{prefix}webhook/")
    assert (exempt.status_code, exempt.json()) == (200, {"ok": True})
