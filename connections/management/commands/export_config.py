from argparse import ArgumentParser
from pathlib import Path

import yaml
from django.core.management.base import BaseCommand

from connections.config.export import config_export


class Command(BaseCommand):
    help = "Write the users, roles and connections that exist as apply_config YAML, without any secret."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--output", "-o", help="Write to this file instead of standard output.")

    def handle(self, *args: object, **options: object) -> None:
        header = (
            "# Exported by `manage.py export_config`. Secrets are not exported: set each client_secret_env\n"
            "# variable (or switch to client_secret_file) before `manage.py apply_config`.\n"
        )
        text = header + yaml.safe_dump(config_export(), sort_keys=False, allow_unicode=True)
        if options["output"]:
            Path(str(options["output"])).write_text(text)
        else:
            self.stdout.write(text, ending="")
