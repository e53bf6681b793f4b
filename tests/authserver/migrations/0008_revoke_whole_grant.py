from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0007_device_code")]

    operations = [migrations.AddField("serverstate", "revoke_whole_grant", models.BooleanField(default=False))]
