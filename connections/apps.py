from django.apps import AppConfig


class ConnectionsConfig(AppConfig):
    name = "connections"
    verbose_name = "OAuth connections"

    def ready(self) -> None:
        from connections.cache import invalidation

        invalidation.connect()
