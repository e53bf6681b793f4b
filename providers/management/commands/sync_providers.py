from django.core.management.base import BaseCommand

from providers.services import provider_catalog_sync


class Command(BaseCommand):
    help = "Load the certified provider presets from providers/catalog.yaml (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        result = provider_catalog_sync()
        self.stdout.write(
            f"Provider catalog: {len(result.created)} created, {len(result.updated)} updated, "
            f"{len(result.unchanged)} unchanged."
        )
        for slug in result.skipped:
            self.stderr.write(f"Skipped {slug}: a provider created in the admin already uses this slug.")
