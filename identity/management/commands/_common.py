"""What every ct4 command shares: --json output and a clean exit when a singleton is busy."""

import json

from django.core.management.base import BaseCommand, CommandError

from identity.runs import JobLocked

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
