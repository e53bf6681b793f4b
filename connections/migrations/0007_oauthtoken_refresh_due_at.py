from django.db import migrations, models
from django.db.models import F


def due_as_scheduled(apps, schema_editor):
    # Until now the schedule was next_refresh_at alone; a token the sweep had claimed shows as due a little later.
    apps.get_model("connections", "OAuthToken").objects.update(refresh_due_at=F("next_refresh_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("connections", "0006_trust_issuer_scope_failed_authentications"),
    ]

    operations = [
        migrations.AddField(
            model_name="oauthtoken",
            name="refresh_due_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(due_as_scheduled, migrations.RunPython.noop),
    ]
