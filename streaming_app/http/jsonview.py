"""Views whose every answer is JSON (:class:`JsonView`), their CSRF check's too:
Django's check, as the project's ``CsrfViewMiddleware`` makes it, answered in JSON."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.log import log_response
from django.utils.module_loading import import_string
from django.views import View
from django.views import csrf as django_csrf
from django.views.decorators.csrf import csrf_exempt

from .responses import error_response, method_not_allowed

#: Django's logger of CSRF refusals.
csrf_logger = logging.getLogger("django.security.csrf")


def csrf_error(reason: str) -> JsonResponse:
    """The JSON 403 of a request that failed Django's CSRF check for ``reason``."""
    return error_response(403, f"CSRF verification failed: {reason}")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A ``CSRF_FAILURE_VIEW`` for a project whose drives are fetched: the JSON 403 of
    :func:`csrf_error`, except for a browser's page asking for HTML (``Accept`` has
    ``text/html``: a form posted by a page), which gets Django's own page."""
    if "text/html" in request.headers.get("Accept", ""):
        return django_csrf.csrf_failure(request, reason=reason)
    return csrf_error(reason)


def _refuse_as_json(self: CsrfViewMiddleware, request: HttpRequest, reason: str) -> HttpResponse:
    response = csrf_error(reason)
    log_response(
        "Forbidden (%s): %s",
        reason,
        request.path,
        response=response,
        request=request,
        logger=csrf_logger,
    )
    return response


_json_checks: dict[type[CsrfViewMiddleware], type[CsrfViewMiddleware]] = {}


def _json_check(middleware: type[CsrfViewMiddleware]) -> type[CsrfViewMiddleware]:
    # ``_reject`` is the hook Django's own ``requires_csrf_token`` overrides; everything
    # else (the origin, the referer, the token) is the project's middleware's.
    if middleware not in _json_checks:
        name = f"Json{middleware.__name__}"
        _json_checks[middleware] = type(name, (middleware,), {"_reject": _refuse_as_json})
    return _json_checks[middleware]


def _unchecked(request: HttpRequest) -> HttpResponse:  # the view the check is told of
    return HttpResponse()  # pragma: no cover - never called


def csrf_refusal(request: HttpRequest) -> HttpResponseBase | None:
    """Django's CSRF check of ``request``, as the project's ``CsrfViewMiddleware``
    makes it, refusing with JSON (:func:`csrf_error`) whatever ``CSRF_FAILURE_VIEW``
    says (or with the answer of a project's subclass that refuses in its own way);
    None if it passes, or the project has no such middleware. For a view that is
    ``csrf_exempt`` so that the middleware leaves the check to it; synchronous (with
    ``CSRF_USE_SESSIONS`` it reads the session)."""
    for dotted in settings.MIDDLEWARE:
        middleware = import_string(dotted)
        if isinstance(middleware, type) and issubclass(middleware, CsrfViewMiddleware):
            check = _json_check(middleware)(_unchecked)
            # Any answer is a refusal: the JSON one of _reject, or the project's own.
            refused: HttpResponseBase | None = check.process_view(request, _unchecked, (), {})
            return refused
    return None


class JsonView(View):
    """A view whose every answer, errors included, is JSON: its CSRF check too, made
    here rather than by ``CsrfViewMiddleware`` (which answers with
    ``CSRF_FAILURE_VIEW``, HTML by default), as the middleware would make it."""

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        # The middleware leaves the check to dispatch().
        return csrf_exempt(super().as_view(**initkwargs))

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        dispatch: Any = super().dispatch
        # A subclass the project exempts as Django says (method_decorator(csrf_exempt,
        # name="dispatch")) is not checked: the exemption is on its dispatch.
        exempt = getattr(type(self).dispatch, "csrf_exempt", False)
        if exempt or request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
            return dispatch(request, *args, **kwargs)
        if not self.view_is_async:
            return csrf_refusal(request) or dispatch(request, *args, **kwargs)

        async def checked() -> Any:
            refused = await sync_to_async(csrf_refusal)(request)
            return refused or await dispatch(request, *args, **kwargs)

        return checked()

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        allowed = [m.upper() for m in self.http_method_names if hasattr(self, m)]
        response = method_not_allowed(request, allowed)
        if self.view_is_async:

            async def answer() -> HttpResponse:
                return response

            return answer()
        return response
