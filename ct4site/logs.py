"""The LOGGING setting: plain lines for people, or one JSON object per line (CT4_LOG_FORMAT=json).

Jobs pass their figures as `extra=` fields (job, run_id, batch, counts, seconds); the JSON
formatter turns each into a key of its own, so a log pipeline can filter on them. No logger of
ours is handed personal data (SPEC §9), whichever format is on.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.core import RESERVED_ATTRS

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The standard attributes a JSON line keeps (plus "time", ISO 8601 in UTC); `extra=` fields follow.
JSON_FIELDS = "%(levelname)s %(name)s %(message)s %(process)d"
LOG_FORMATS = ("plain", "json")


def json_formatter() -> dict:
    """The JSON formatter's dictConfig entry (shared with gunicorn's own log configuration)."""
    return {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": JSON_FIELDS,
        "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
        "timestamp": "time",
        # Django passes the request object along; its text is the full URL, query string included.
        "reserved_attrs": [*RESERVED_ATTRS, "request"],
    }


class RouteNotPathFilter(logging.Filter):
    """Django's request lines ("Not Found: /api/v1/ops/jobs/45871236") name the URL pattern, not the path.

    The path is whatever the caller typed, and a caller may type a phone or a DNI into it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        path = getattr(request, "path", None)
        if path is None or not isinstance(record.args, tuple):
            return True
        typed = {path, path.encode("unicode_escape").decode("ascii")}
        match = getattr(request, "resolver_match", None)
        route = f"/{match.route}" if match is not None else "(a path no URL pattern matches)"
        record.args = tuple(route if isinstance(arg, str) and arg in typed else arg for arg in record.args)
        return True


def logging_config(*, log_format: str = "plain", level: str = "INFO", stream: object = None) -> dict:
    """Django's LOGGING for `log_format`: our loggers (ct4.*), Django's and django-q2's on one handler.

    `stream` is the handler's stream (stderr when None); tests pass a buffer to read the lines back.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"CT4_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = {"class": "logging.StreamHandler", "formatter": log_format, "filters": ["route_not_path"]}
    if stream is not None:
        handler["stream"] = stream
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": PLAIN_FORMAT}, "json": json_formatter()},
        "filters": {"route_not_path": {"()": RouteNotPathFilter}},
        "handlers": {"console": handler},
        "loggers": {
            "ct4": {"handlers": ["console"], "level": level, "propagate": False},
            # Django's request errors and django-q2's cluster lines come out in the same format.
            "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "django-q": {"handlers": ["console"], "level": "INFO", "propagate": False},
        },
    }
