from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0001_initial")]

    operations = [
        migrations.AddField("serverstate", "response_delay", models.FloatField(default=0)),
        migrations.AddField("serverstate", "fault_description", models.TextField(default="")),
        migrations.AddField("serverstate", "refresh_token_reuses", models.IntegerField(default=0)),
        migrations.CreateModel(
            name="UsedRefreshToken",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("token", models.CharField(max_length=255, unique=True)),
            ],
        ),
    ]
