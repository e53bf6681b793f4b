from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from connections.errors import RotationError
from connections.ops.key_rotation import DEFAULT_BATCH_SIZE, TableProgress, rotate_encryption_key


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the current CRYPTOGRAPHY_KEY. Set CRYPTOGRAPHY_KEY to the new key and "
        "CRYPTOGRAPHY_KEY_PREVIOUS to the old one(s), newest first, then run this. Values already under the current "
        "key are left as they are, so an interrupted run is simply run again. A key listed both as current and as "
        "previous is refused: it is most likely a new key that was never set, and the run would change nothing."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"Rows per batch; each batch is one short transaction (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be re-encrypted.")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: default).")

    def handle(self, *args: object, **options: object) -> None:
        dry_run = bool(options["dry_run"])
        batch_size = int(str(options["batch_size"]))

        def show(state: TableProgress) -> None:
            self.stdout.write(str(state))

        try:
            results = rotate_encryption_key(
                batch_size=batch_size, dry_run=dry_run, using=str(options["database"]), progress=show
            )
        except RotationError as error:
            raise CommandError(str(error)) from None
        changed = sum(result.reencrypted for result in results)
        current = sum(result.current for result in results)
        if dry_run:
            self.stdout.write(f"Dry run: {changed} row(s) would be re-encrypted, {current} already current.")
        elif changed:
            self.stdout.write(
                self.style.SUCCESS(f"Done: {changed} row(s) re-encrypted, {current} already current. ")
                + "Once every process runs with the new CRYPTOGRAPHY_KEY, run this again (it should re-encrypt "
                "nothing) and then remove the old key(s) from CRYPTOGRAPHY_KEY_PREVIOUS."
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Done: all {current} row(s) are already under CRYPTOGRAPHY_KEY."))
