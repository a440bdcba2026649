"""What every ct4 command shares: --json output, a clean exit when a singleton is busy or the database is away."""

import json

import psycopg
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from identity.runs import DatabaseUnavailable, JobLocked, connection_lost, safe_error

# 0 done; 1 done but a check failed, or the database stayed away (one line, no traceback);
# 2 bad arguments or unusable input; 3 another copy of this singleton holds its lock.
EXIT_FAILED = 1
EXIT_LOCKED = 3


class JobCommand(BaseCommand):
    """A thin command over one service call; subclasses implement run() and summary()."""

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print a machine-readable summary")

    def handle(self, *args, **options):
        try:
            result = self.run(**options)
        except JobLocked as exc:
            raise CommandError(str(exc), returncode=EXIT_LOCKED) from None
        except DatabaseUnavailable as exc:
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None
        except (DatabaseError, psycopg.Error) as exc:
            # Lost outside a batch (before the first, say): nothing to retry, one line to say why.
            if not connection_lost(exc):
                raise
            raise CommandError(f"database unreachable: {safe_error(exc)}", returncode=EXIT_FAILED) from None
        if options["json"]:
            self.stdout.write(json.dumps(self.as_json(result), default=str, sort_keys=True))
        else:
            self.stdout.write(self.summary(result))
        return None

    def run(self, **options):
        raise NotImplementedError

    def as_json(self, result):
        return result.as_dict() if hasattr(result, "as_dict") else result

    def summary(self, result) -> str:
        return " ".join(f"{key}={value}" for key, value in dict(result).items())
