"""Masking personal data for anything printed outside the admin (SPEC §9)."""

from datetime import date


def mask(value) -> str | None:
    """'+51987654321' -> '+51*******21'; dates keep only the year. None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return f"{value.year}-**-**"
    text = str(value)
    if "@" in text:
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain}"
    keep = 3 if text.startswith("+") else 0
    return text[:keep] + "*" * max(len(text) - keep - 2, 0) + text[-2:]
