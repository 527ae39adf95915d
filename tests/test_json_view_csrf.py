"""JsonView makes Django's CSRF check itself (so that its refusal is JSON): a subclass
the project marks ``csrf_exempt`` the Django way is still exempt."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import HttpRequest, HttpResponseForbidden, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
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


class HeaderCsrfMiddleware(CsrfViewMiddleware):
    """A project's CSRF middleware with a rule of its own, refusing with its own
    answer (not through ``_reject``)."""

    def process_view(self, request: HttpRequest, callback: Any, args: Any, kwargs: Any) -> Any:
        if getattr(callback, "csrf_exempt", False):
            return None
        if request.method == "POST" and "X-Requested-With" not in request.headers:
            return HttpResponseForbidden("X-Requested-With is required")
        return super().process_view(request, callback, args, kwargs)


@pytest.mark.parametrize("prefix", ["", "async-"])
def test_a_refusal_of_the_projects_csrf_middleware_stands(settings: Any, prefix: str):
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = [
        f"{__name__}.HeaderCsrfMiddleware" if m.endswith("CsrfViewMiddleware") else m
        for m in settings.MIDDLEWARE
    ]
    client = Client()
    assert client.post(f"/{prefix}checked/").status_code == 403
    allowed = client.post(f"/{prefix}checked/", headers={"X-Requested-With": "fetch"})
    assert allowed.status_code == 200
