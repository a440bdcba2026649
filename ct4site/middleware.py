"""Site-wide middleware: the probe endpoints ahead of everything, and the request metrics."""

from __future__ import annotations

import time

from django.http import JsonResponse

from ct4site import metrics, probes

PROBES = {"/healthz": probes.healthz, "/readyz": probes.readyz, "/metrics": probes.metrics_view}


class ProbeMiddleware:
    """Answer /healthz, /readyz and /metrics before the host check, the HTTPS redirect and the session.

    Load balancers and Prometheus call by IP address (not an ALLOWED_HOSTS name) over plain HTTP
    inside the network; Django's checks would answer them 400 or 301. Not counted in the request
    metrics: probes every few seconds would drown the traffic they measure.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = PROBES.get(request.path_info)
        if view is None:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            response = JsonResponse({"error": "GET only"}, status=405)
            response["Allow"] = "GET, HEAD"
            return response
        return view(request)


class RequestMetricsMiddleware:
    """Count and time every request (static files included), labelled by view, method and status."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        metrics.request_observe(request, response.status_code, time.perf_counter() - started)
        return response
