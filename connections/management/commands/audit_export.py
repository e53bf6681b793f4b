from argparse import ArgumentParser, ArgumentTypeError
from datetime import UTC, datetime
from typing import cast

from django.core.management.base import BaseCommand
from django.utils.dateparse import parse_date, parse_datetime

from connections.audit.retention import EXPORT_FIELDS, audit_json_lines


def moment(text: str) -> datetime:
    """A date (its midnight, UTC) or a date and time (UTC unless it names its offset)."""
    parsed = parse_datetime(text)
    if parsed is None and (day := parse_date(text)) is not None:
        parsed = datetime(day.year, day.month, day.day)
    if parsed is None:
        raise ArgumentTypeError(f"{text!r} is not a date (2026-01-31) or a date and time (2026-01-31T12:00:00Z).")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Write the audit events created in [--since, --until) as JSON lines, oldest first (to archive them before "
        f"AUDIT_RETENTION_DAYS prunes them). Each line has: {', '.join(EXPORT_FIELDS)}."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--since", type=moment, help="From this date or time (included); default: the first.")
        parser.add_argument("--until", type=moment, help="Up to this date or time (excluded); default: now.")
        parser.add_argument("--output", "-o", help="Write to this file instead of standard output.")

    def handle(self, *args: object, **options: object) -> None:
        since, until, output = options["since"], options["until"], options["output"]
        lines = audit_json_lines(since=cast(datetime | None, since), until=cast(datetime | None, until))
        if output:
            with open(str(output), "w", encoding="utf-8") as file:
                written = sum(1 for line in lines if file.write(line))
            self.stderr.write(f"Wrote {written} audit events to {output}.")
        else:
            for line in lines:  # written as they are read, however many
                self.stdout.write(line, ending="")
