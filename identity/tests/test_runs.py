"""identity.runs: how a command ends (one exit-status function) and the rolled-back dry run, on the
one identity job that changes data, refresh_drivers_index."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from identity.models import DriverIndexEntry, IdentityLink, JobRun, Person
from identity.runs import EXIT_LOCKED, EXIT_PROBLEMS, EXIT_USAGE, command_exit, rolled_back
from identity.tests.factories import make_driver

pytestmark = pytest.mark.django_db


def test_command_exit_with_a_message_is_a_one_line_command_error_and_without_one_a_plain_exit():
    with pytest.raises(CommandError) as error:
        command_exit(EXIT_USAGE, "--limit must be >= 0")
    assert (error.value.returncode, str(error.value)) == (2, "--limit must be >= 0")
    with pytest.raises(SystemExit) as exit_:
        command_exit(EXIT_PROBLEMS)
    assert exit_.value.code == 1
    assert (EXIT_USAGE, EXIT_LOCKED) == (2, 3)


def test_rolled_back_returns_the_result_and_keeps_nothing():
    assert rolled_back(lambda: (Person.objects.create(), Person.objects.count())[1]) == 1
    assert not Person.objects.exists()


def test_refresh_drivers_index_dry_run_reports_the_new_persons_and_writes_nothing():
    make_driver(first_name="Rosa", last_name="Quispe Mamani", phone="987111222", document="41234567")
    make_driver(first_name="Julio", last_name="Ñahui Condori", phone="987333444", document="42345678")
    out = StringIO()
    call_command("refresh_drivers_index", "--dry-run", "--json", stdout=out)
    figures = json.loads(out.getvalue())
    assert (figures["changed"], figures["new_persons"], figures["dry_run"]) == (2, 2, True)
    assert not DriverIndexEntry.objects.exists()
    assert not Person.objects.exists() and not IdentityLink.objects.exists()
    assert not JobRun.objects.exists()
    # The real run then does what the dry run said.
    call_command("refresh_drivers_index", "--json", stdout=StringIO())
    assert DriverIndexEntry.objects.count() == 2 and Person.objects.count() == 2
