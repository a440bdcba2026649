"""Make a user a reviewer: a staff account in the `reviewer` group (review and view, nothing else)."""

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from identity.runs import EXIT_USAGE, command_exit
from recovery.review.groups import reviewer_group_ensure
from recovery.review.rules import REVIEWER_GROUP


class Command(BaseCommand):
    help = ("Create (or update) a reviewer: a staff user in the 'reviewer' group, who can open /review/, "
            "decide doubtful leads and view the admin and the dashboard, and change nothing else.")

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--email", default="", help="the reviewer's e-mail (optional)")
        parser.add_argument("--new-password", action="store_true",
                            help="set a new random password (printed once); a new user always gets one")

    def handle(self, *args, **options):
        reviewer_group_ensure()
        User = get_user_model()
        username = options["username"].strip()
        if not username:
            command_exit(EXIT_USAGE, "the username must not be empty")
        user, created = User.objects.get_or_create(username=username, defaults={"email": options["email"]})
        password = None
        if created or options["new_password"]:
            password = secrets.token_urlsafe(12)
            user.set_password(password)
        user.is_staff = True
        user.is_active = True
        user.save()
        user.groups.add(Group.objects.get(name=REVIEWER_GROUP))
        self.stdout.write(f"{'created' if created else 'updated'} reviewer {username}")
        if password:
            self.stdout.write(f"password (shown only now): {password}")
