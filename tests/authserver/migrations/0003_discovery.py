from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0002_delays_and_reuse")]

    operations = [migrations.AddField("serverstate", "discovery", models.JSONField(default=dict))]
