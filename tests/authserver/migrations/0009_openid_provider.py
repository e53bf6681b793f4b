from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0008_revoke_whole_grant")]

    operations = [
        migrations.CreateModel(
            name="OpenIdFault",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("mode", models.CharField(max_length=20)),
            ],
        )
    ]
