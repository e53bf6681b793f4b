import os
import secrets
import sys
from argparse import ArgumentParser

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.db import transaction

EMAIL_PROMPT = (
    "The administrator's e-mail address (a failing connection is e-mailed to the managers: without one nobody "
    "is told). Enter for none: "
)

NO_EMAIL = "No e-mail address: nobody is told when a connection fails (add one: admin > Users)."


class Command(BaseCommand):
    help = (
        "Make sure an administrator exists. Uses DJANGO_SUPERUSER_USERNAME / _EMAIL / _PASSWORD when set; "
        "otherwise creates 'admin' with a generated password, printed this once. Its e-mail address comes from "
        "--email or DJANGO_SUPERUSER_EMAIL, else it is asked for when run in a terminal."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--email", default=None, help="The administrator's e-mail address.")
        parser.add_argument("--no-input", action="store_false", dest="interactive", help="Never ask anything.")

    def handle(self, *args: object, **options: object) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True, is_active=True).exists():
            self.stdout.write("An administrator already exists.")
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        email = self._email(str(options.get("email") or os.environ.get("DJANGO_SUPERUSER_EMAIL", "")), options)
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        generated = not password
        password = password or secrets.token_urlsafe(12)
        with transaction.atomic():
            # defaults named (None, as by default), so that no key of the lookup can be taken for it
            user, _ = user_model.objects.get_or_create(defaults=None, **{user_model.USERNAME_FIELD: username})
            user.email = email or user.email
            user.is_staff = user.is_superuser = user.is_active = True
            user.set_password(password)
            user.save()
        if generated:
            self.stdout.write(self.style.SUCCESS(_banner(username, password, user.email)))
        else:
            self.stdout.write(self.style.SUCCESS(f"Created administrator '{username}' from DJANGO_SUPERUSER_*."))
            if not user.email:
                self.stdout.write(self.style.WARNING(NO_EMAIL))

    def _email(self, given: str, options: dict) -> str:
        """The address given (checked), else asked for when a person is at the terminal, else none."""
        if given:
            try:
                validate_email(given)
            except ValidationError:
                raise CommandError(f"{given!r} is not an e-mail address.") from None
            return given
        if not options.get("interactive", True) or not sys.stdin.isatty():
            return ""
        while True:
            answer = input(EMAIL_PROMPT).strip()
            try:
                if answer:
                    validate_email(answer)
                return answer
            except ValidationError:
                self.stderr.write(f"{answer!r} is not an e-mail address; try again, or Enter for none.")


def _banner(username: str, password: str, email: str) -> str:
    """Framed, so that it stands out of `make run`'s output, where it is the last thing before the processes'."""
    lines = [
        "Administrator created: sign in to the admin with",
        f"    username: {username}",
        f"    password: {password}",
        "It is shown only this once; change it with",
        f"    python manage.py changepassword {username}",
        f"Failure notices are e-mailed to {email}." if email else NO_EMAIL,
    ]
    width = max(len(line) for line in lines) + 4
    rule = "=" * width
    return "\n".join(["", rule, *(f"  {line}" for line in lines), rule, ""])
