from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0004_token_quirks")]

    operations = [
        migrations.AddField("serverstate", "client_auth", models.CharField(max_length=10, default="")),
        migrations.AddField("serverstate", "json_body", models.BooleanField(default=False)),
        migrations.AddField("serverstate", "refresh_elsewhere", models.BooleanField(default=False)),
    ]
