"""Undo one wrong lead link for an operator, in the name of the reviewer who decided it."""

from django.contrib.auth import get_user_model

from identity.models import UndoneVia
from identity.runs import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, JobCommand, command_exit
from recovery.review.rules import REVIEW_PERMISSION, review_allowed
from recovery.review.undo import link_undo


class Command(JobCommand):
    help = ("Undo the link of one lead (SOURCE_PK) in the name of a reviewer (--by): the link is kept in "
            "canon.identity_link_history with --reason, the lead is never linked to that person automatically "
            "again, and it goes back to the queue and the red backlog. --dry-run shows it and keeps nothing.")
    rollback_dry_run = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("source_pk", metavar="SOURCE_PK", help="the lead's source_pk")
        parser.add_argument("--by", required=True, metavar="USERNAME",
                            help=f"the reviewer who decided it (a user with {REVIEW_PERMISSION}, or in the "
                                 "reviewer group)")
        parser.add_argument("--reason", required=True, help="why the link is wrong (kept in the history)")

    def run(self, **options):
        user = get_user_model().objects.filter(username=options["by"]).first()
        if user is None:
            command_exit(EXIT_USAGE, f"there is no user {options['by']!r}: name the reviewer who decided the undo")
        if not review_allowed(user):
            command_exit(EXIT_USAGE, f"{user.get_username()} may not undo links: add them to the reviewer group "
                                     "(manage.py add_reviewer) or name a reviewer")
        if not options["reason"].strip():
            command_exit(EXIT_USAGE, "--reason must say why the link is wrong")
        return link_undo(source_pk=options["source_pk"], user=user, reason=options["reason"].strip(),
                         undone_via=UndoneVia.COMMAND)

    def summary(self, result) -> str:
        if not result.undone:
            return result.message
        return (f"{result.message} Without that person the matcher decides {result.matcher_outcome} "
                "(the next recovery run acts on it).")

    def exit_status(self, result) -> int:
        return EXIT_OK if result.undone else EXIT_PROBLEMS
