"""One error body for every API failure, with no echo of what the caller sent.

Body: {"error": {"status": 400, "code": "invalid", "message": "...", "fields": {...}}}.
Validators (DRF's, django-filter's) quote rejected values in their messages ("'x' is not a
valid choice"); a value may be personal data, so every value the request carried is replaced
by <value> before the message leaves.
"""

from __future__ import annotations

import logging

from django.http import JsonResponse
from django.views.defaults import page_not_found
from django.views.defaults import server_error as django_server_error
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger("ct4.api")


def _request_values(request) -> list[str]:
    if request is None:
        return []
    values = [v for _, vs in request.query_params.lists() for v in vs]
    data = getattr(request, "_full_data", None)
    if hasattr(data, "lists"):
        values += [v for _, vs in data.lists() for v in vs if isinstance(v, str)]
    elif isinstance(data, dict):
        values += [v for v in data.values() if isinstance(v, str)]
    # Longest first, so a value containing another is replaced whole.
    return sorted({v for v in values if v.strip()}, key=len, reverse=True)


def _scrub(detail, values: list[str]):
    if isinstance(detail, dict):
        return {str(key): _scrub(value, values) for key, value in detail.items()}
    if isinstance(detail, list):
        flat = [_scrub(item, values) for item in detail]
        return flat[0] if len(flat) == 1 and isinstance(flat[0], str) else flat
    text = str(detail)
    for value in values:
        text = text.replace(value, "<value>")
    return text


def api_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        # Not an API exception: Django turns it into a 500; log the type only (no values).
        logger.error("unhandled %s in %s", type(exc).__name__, context.get("view").__class__.__name__)
        return None
    request = context.get("request")
    values = _request_values(request)
    if isinstance(exc, ValidationError):
        fields = _scrub(exc.detail, values)
        if not isinstance(fields, dict):
            fields = {"non_field_errors": fields if isinstance(fields, list) else [fields]}
        body = {"status": response.status_code, "code": "invalid",
                "message": "Some parameters are not valid: see fields.", "fields": fields}
    else:
        code = exc.get_codes() if isinstance(exc, APIException) else "error"
        body = {"status": response.status_code, "code": code if isinstance(code, str) else "error",
                "message": _scrub(getattr(exc, "detail", str(exc)), values)}
    response.data = {"error": body}
    return response


def not_found(request, exception=None):
    """handler404: under /api/ the error body of the API, elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": {"status": 404, "code": "not_found", "message": "No such API resource."}},
                            status=404)
    return page_not_found(request, exception)


def server_error(request):
    """handler500: under /api/ a JSON body without details, elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": {"status": 500, "code": "server_error", "message": "Internal error."}},
                            status=500)
    return django_server_error(request)


def error_response(status_code: int, code: str, message: str) -> Response:
    return Response({"error": {"status": status_code, "code": code, "message": message}}, status=status_code)


__all__ = ["api_exception_handler", "error_response", "not_found", "server_error", "status"]
