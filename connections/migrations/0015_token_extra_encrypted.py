"""OAuthToken.extra encrypted like the tokens, and cleared of any secret a provider nested in it: a new encrypted
column filled from the old one, which then goes (a JSON column cannot be altered into an encrypted one in place)."""

import django_cryptography.fields
from django.db import migrations, models

# As connections.oauth.answers.SECRET_WORDS was when this migration was written (migrations do not import code
# that may change after them).
SECRET_WORDS = ("token", "secret", "password", "code", "assertion", "webhook")


def without_secrets(value):
    if isinstance(value, dict):
        return {
            key: without_secrets(item)
            for key, item in value.items()
            if not (isinstance(key, str) and any(word in key.lower() for word in SECRET_WORDS))
        }
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    return value


def encrypt_extra(apps, schema_editor):
    OAuthToken = apps.get_model("connections", "OAuthToken")
    for token in OAuthToken.objects.only("pk", "extra").iterator(chunk_size=500):
        OAuthToken.objects.filter(pk=token.pk).update(sealed_extra=without_secrets(token.extra or {}))


class Migration(migrations.Migration):
    dependencies = [("connections", "0014_periodic_job_failures")]

    operations = [
        migrations.AddField(
            model_name="oauthtoken",
            name="sealed_extra",
            field=django_cryptography.fields.encrypt(
                models.JSONField(blank=True, default=dict, help_text="The other fields of the token response.")
            ),
        ),
        migrations.RunPython(encrypt_extra, migrations.RunPython.noop),
        migrations.RemoveField(model_name="oauthtoken", name="extra"),
        migrations.RenameField(model_name="oauthtoken", old_name="sealed_extra", new_name="extra"),
    ]
