from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from connections.config.demo import demo_connections_set_up, demo_instructions, demo_provider_start
from connections.errors import DemoProviderError


class Command(BaseCommand):
    help = (
        "make demo: start a local OAuth 2.0 provider on 127.0.0.1 (development only) with a "
        "client-credentials application, an authorization-code application and a user, create the two matching "
        "connections, and say what to click. Runs until Ctrl-C."
    )
    # until: a threading.Event that stops it (the browser test's), given through call_command only
    stealth_options = ("until",)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=9100, help="The provider's port on 127.0.0.1 (9100).")

    def handle(self, *args: object, **options: object) -> None:
        try:
            provider = demo_provider_start(port=int(options["port"]))  # type: ignore[call-overload]
        except DemoProviderError as exc:
            raise CommandError(str(exc)) from None
        try:
            setup = demo_connections_set_up(provider=provider)
        except DemoProviderError as exc:
            provider.stop()
            raise CommandError(str(exc)) from None
        except BaseException:
            provider.stop()
            raise
        self.stdout.write(self.style.SUCCESS(demo_instructions(provider=provider, setup=setup)))
        provider.serve(until=options.get("until"))  # type: ignore[arg-type]
