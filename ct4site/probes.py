"""The probe endpoints: /healthz (the process answers), /readyz (it can serve), /metrics (Prometheus).

Thin views: the checks are ct4site.health, the exposition and its access rule ct4site.metrics.
No authentication on the health endpoints and nothing personal in any body.
"""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse

from ct4site import health, metrics


def _no_store(response):
    response["Cache-Control"] = "no-store"
    # Django logs every 4xx/5xx answer; a load balancer probing a not-ready process every few
    # seconds would fill the log with the same line. The body and the prober say what failed.
    response._has_been_logged = True
    return response


def healthz(request):
    """Up: the process answers. Touches no database, so a database outage does not restart web processes."""
    return _no_store(JsonResponse({"status": "ok"}))


def readyz(request):
    """200 when every check passes, else 503 naming the failing ones."""
    report = health.readiness()
    return _no_store(JsonResponse(report, status=200 if report["status"] == "ok" else 503))


def metrics_view(request):
    access = metrics.metrics_access(request)
    if access == "no_token":
        return _no_store(JsonResponse(
            {"error": "metrics are open to loopback callers only; set CT4_METRICS_TOKEN for remote scrapes"},
            status=403))
    if access == "bad_token":
        response = JsonResponse({"error": "send Authorization: Bearer <CT4_METRICS_TOKEN>"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _no_store(response)
    body, content_type = metrics.metrics_render()
    return _no_store(HttpResponse(body, content_type=content_type))
