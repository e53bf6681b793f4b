from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("authserver", "0005_request_shapes")]

    operations = [
        migrations.AddField("clientflags", "public_key", models.TextField(default="")),
        migrations.AddField("clientflags", "key_id", models.CharField(max_length=200, default="")),
        migrations.AddField("clientflags", "secret", models.CharField(max_length=255, default="")),
        migrations.AddField("serverstate", "token_jwt_bearer", models.IntegerField(default=0)),
        migrations.CreateModel(
            name="UsedAssertion",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("jti", models.CharField(max_length=255, unique=True)),
            ],
        ),
    ]
