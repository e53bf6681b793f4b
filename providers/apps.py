from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "Provider types"

    def ready(self) -> None:
        post_migrate.connect(_sync_catalog_after_migrate, sender=self)


def _sync_catalog_after_migrate(**kwargs: object) -> None:
    # `migrate` alone leaves a fresh or upgraded installation with the current presets.
    from providers.services import provider_catalog_sync

    provider_catalog_sync(using=str(kwargs.get("using", "default")))
