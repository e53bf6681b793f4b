from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0006_signed_assertions")]

    operations = [migrations.AddField("serverstate", "token_device_code", models.IntegerField(default=0))]
