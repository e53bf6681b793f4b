"""The token change log and the triggers that write it (connections.cache.change_log)."""

from django.db import migrations, models


def triggers_install(apps, schema_editor) -> None:
    from connections.cache.change_log import triggers_install

    triggers_install(schema_editor.connection)


def triggers_remove(apps, schema_editor) -> None:
    from connections.cache.change_log import triggers_remove

    triggers_remove(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("connections", "0021_audit_at_scale"),
    ]

    operations = [
        migrations.CreateModel(
            name="TokenChange",
            fields=[
                ("seq", models.BigAutoField(primary_key=True, serialize=False)),
                ("token_id", models.BigIntegerField()),
                ("changed_at", models.DateTimeField()),
            ],
        ),
        migrations.RunPython(triggers_install, triggers_remove),
    ]
