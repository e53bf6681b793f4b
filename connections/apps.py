from django.apps import AppConfig


class ConnectionsConfig(AppConfig):
    name = "connections"
    verbose_name = "OAuth connections"

    def ready(self) -> None:
        from connections import token_cache  # noqa: F401 - connects the signals that invalidate cached grants
