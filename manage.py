#!/usr/bin/env python
"""Django's command-line utility for ct4 identity recovery."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ct4site.settings")
    # Django's own manage.py layout: Django is imported once the settings module is named.
    from django.core.exceptions import ImproperlyConfigured  # noqa: PLC0415 - after DJANGO_SETTINGS_MODULE
    from django.core.management import execute_from_command_line  # noqa: PLC0415 - after DJANGO_SETTINGS_MODULE

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A configuration mistake is the operator's to fix: say what, without a traceback.
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
