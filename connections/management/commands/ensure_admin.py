import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction


class Command(BaseCommand):
    help = (
        "Make sure an administrator exists. Uses DJANGO_SUPERUSER_USERNAME / _EMAIL / _PASSWORD when set; "
        "otherwise creates 'admin' with a generated password, printed this once."
    )

    def handle(self, *args: object, **options: object) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True, is_active=True).exists():
            self.stdout.write("An administrator already exists.")
            return
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
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
            self.stdout.write(self.style.SUCCESS(_banner(username, password)))
        else:
            self.stdout.write(self.style.SUCCESS(f"Created administrator '{username}' from DJANGO_SUPERUSER_*."))


def _banner(username: str, password: str) -> str:
    """Framed, so that it stands out of `make run`'s output, where it is the last thing before the processes'."""
    lines = [
        "Administrator created: sign in to the admin with",
        f"    username: {username}",
        f"    password: {password}",
        "It is shown only this once; change it with",
        f"    python manage.py changepassword {username}",
    ]
    width = max(len(line) for line in lines) + 4
    rule = "=" * width
    return "\n".join(["", rule, *(f"  {line}" for line in lines), rule, ""])
