from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0003_discovery")]

    operations = [
        migrations.AddField("serverstate", "nest_under", models.CharField(max_length=40, default="")),
        migrations.AddField("serverstate", "require_params", models.JSONField(default=dict)),
        migrations.AddField("serverstate", "require_headers", models.JSONField(default=dict)),
    ]
