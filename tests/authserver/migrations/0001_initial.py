from django.db import migrations, models


def create_state_row(apps, schema_editor) -> None:
    # The control views and the token wrapper always read/update this singleton row.
    apps.get_model("authserver", "ServerState").objects.get_or_create(pk=1)


def _id() -> models.BigAutoField:
    return models.BigAutoField(
        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
    )


class Migration(migrations.Migration):
    initial = True

    dependencies = ()  # Django copies these into lists; tuples keep the class attribute immutable

    operations = (
        migrations.CreateModel(
            name="ClientFlags",
            fields=[
                ("id", _id()),
                ("client_id", models.CharField(max_length=255, unique=True)),
                ("pkce_required", models.BooleanField(default=False)),
            ],
        ),
        migrations.CreateModel(
            name="ServerState",
            fields=[
                ("id", _id()),
                ("fault_mode", models.CharField(default="none", max_length=32)),
                ("fault_remaining", models.IntegerField(default=None, null=True)),
                ("fault_delay", models.FloatField(default=0)),
                ("fault_grant_types", models.JSONField(default=None, null=True)),
                ("token_extra", models.JSONField(default=dict)),
                ("omit_expires_in", models.BooleanField(default=False)),
                ("omit_refresh_token_on_refresh", models.BooleanField(default=False)),
                ("latency", models.FloatField(default=0)),
                ("token_authorization_code", models.IntegerField(default=0)),
                ("token_refresh_token", models.IntegerField(default=0)),
                ("token_client_credentials", models.IntegerField(default=0)),
                ("token_other", models.IntegerField(default=0)),
                ("revocations", models.IntegerField(default=0)),
                ("introspections", models.IntegerField(default=0)),
            ],
        ),
        migrations.RunPython(create_state_row, migrations.RunPython.noop),
    )
