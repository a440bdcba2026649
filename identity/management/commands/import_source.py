"""`manage.py import_source KIND FILE`: load a source CSV (SPEC §8); exit 0 all loaded, 1 some rejected, 2 unusable."""

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand

from identity.importing import KINDS, ImportFileError, source_import
from identity.runs import EXIT_USAGE, command_exit


class Command(BaseCommand):
    help = (
        f"Import a CSV of {', '.join(KINDS)}. Bad rows go to FILE.rejects.csv (also on --dry-run). "
        "Exit status: 0 every row loaded, 1 some rows rejected, 2 unusable file or arguments."
    )

    def add_arguments(self, parser):
        parser.add_argument("kind", help=" | ".join(KINDS))
        parser.add_argument("file", type=Path)
        parser.add_argument("--dry-run", action="store_true", help="validate and count, then roll back")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args, kind, file, dry_run, **options):
        try:
            result = source_import(kind=kind, path=file, dry_run=dry_run, progress=sys.stderr.isatty())
        except ImportFileError as error:
            self.stderr.write(f"import_source: {error}")
            if options["json"]:
                self.stdout.write(json.dumps({"kind": kind, "path": str(file), "error": str(error)}))
            command_exit(EXIT_USAGE)
        self.stdout.write(json.dumps(result.as_dict()) if options["json"] else result.summary())
        if result.exit_status:
            command_exit(result.exit_status)
