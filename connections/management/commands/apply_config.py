from argparse import ArgumentParser
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from connections.config.apply import config_apply, config_plan
from connections.errors import ConfigError


class Command(BaseCommand):
    help = (
        "Create or update users, roles and connections from a YAML file, idempotently. The whole file is checked "
        "first: with any problem nothing is written. Secrets only by reference (client_secret_env / _file)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("file", help='The YAML file (see docs/operations.md, "Configuration as code").')
        parser.add_argument("--dry-run", action="store_true", help="Print the plan and write nothing.")

    def handle(self, *args: object, **options: object) -> None:
        path = Path(str(options["file"]))
        try:
            text = path.read_text()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from None
        try:
            plan = config_plan(text, base_dir=path.resolve().parent)
        except ConfigError as exc:
            for problem in exc.problems:
                self.stderr.write(f"{path}: {problem}")
            raise CommandError(f"{len(exc.problems)} problem(s) in {path}; nothing was changed.") from None
        for change in plan.changes:
            self.stdout.write(str(change))
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing was written.")
        elif not plan.has_changes:
            self.stdout.write("Nothing to change.")
        else:
            config_apply(plan)
            counts = {action: sum(c.action == action for c in plan.changes) for action in ("create", "update")}
            self.stdout.write(self.style.SUCCESS(f"Applied: {counts['create']} created, {counts['update']} updated."))
