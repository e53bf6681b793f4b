"""Form fields that know nothing of connections: JSON that PostgreSQL can store, a write-only textarea, the
extra authorization parameters as a query string or JSON, a label that can say "required" on its own."""

import json
import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from django import forms
from django.forms.boundfield import BoundField
from django.utils.safestring import SafeString

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_PARAMS = 100

_FieldT = TypeVar("_FieldT", bound=forms.Field)


def form_field(form: forms.BaseForm, name: str, kind: type[_FieldT]) -> _FieldT:
    """The form's field of that name, of the kind the model form factory made it (a ChoiceField for a field with
    choices, a ModelChoiceField for a foreign key): what is set on it is known to be there."""
    field = form.fields[name]
    if not isinstance(field, kind):
        raise TypeError(f"The field {name} is a {type(field).__name__}, not a {kind.__name__}.")
    return field


def _has_unstorable_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(UNSTORABLE.search(value))
    if isinstance(value, dict):
        return any(_has_unstorable_text(key) or _has_unstorable_text(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_unstorable_text(item) for item in value)
    return False


class SafeJSONField(forms.JSONField):
    """JSON that PostgreSQL can store and Python can parse without blowing up: bounded, no NUL, no surrogates."""

    MAX_LENGTH = 10_000

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and len(value) > self.MAX_LENGTH:
            raise forms.ValidationError(f"Keep this under {self.MAX_LENGTH} characters.")
        try:
            return super().to_python(value)
        except (ValueError, RecursionError):  # huge integers, absurd nesting
            raise forms.ValidationError("Enter valid JSON.") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        # Parsed again to show the form after an error: the same limits apply.
        if isinstance(data, str) and len(data) > self.MAX_LENGTH:
            return forms.fields.InvalidJSONInput(data)
        try:
            return super().bound_data(data, initial)
        except (ValueError, RecursionError):
            return forms.fields.InvalidJSONInput(data)

    def prepare_value(self, value: Any) -> Any:
        # Shown again after an error: escaped, so a lone surrogate from "\ud800" cannot break the page's encoding.
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=True, cls=self.encoder)

    def validate(self, value: Any) -> None:
        super().validate(value)
        if _has_unstorable_text(value):
            raise forms.ValidationError("Text here cannot contain NUL or lone surrogate characters.")


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never shows a value back, not even the one just posted (the private key)."""

    def format_value(self, value: Any) -> None:
        return None


PARAMS_EXAMPLES = (
    "name=value pairs joined by &, e.g. prompt=consent&access_type=offline, "
    'or a JSON object, e.g. {"prompt": "consent"}'
)


def authorization_params_from_query(text: str) -> dict[str, str]:
    """name=value pairs joined by & (as providers' documentation writes them), percent-decoded; each name once."""
    if any(char.isspace() for char in text):
        raise forms.ValidationError("Write the pairs without spaces or line breaks (a space in a value is + or %20).")
    query = text.removeprefix("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_PARAMS)
    except ValueError:
        pieces = query.split("&")
        if len(pieces) > MAX_PARAMS:
            raise forms.ValidationError(f"Give at most {MAX_PARAMS} parameters.") from None
        bad = next(piece for piece in pieces if "=" not in piece)  # what strict parsing refuses
        problem = f"“{bad}” is not a name=value pair" if bad else "An “&” has no pair after it"
        raise forms.ValidationError(f"{problem}. Write {PARAMS_EXAMPLES}.") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if not name:
            raise forms.ValidationError(f"A pair has no name before its “=”: “={value}”.")
        if name in params:
            raise forms.ValidationError(f"“{name}” is given twice: an authorization parameter takes one value.")
        params[name] = value
    return params


class AuthorizationParamsField(SafeJSONField):
    """Extra authorization parameters typed as a query string or as JSON; either way the same dict, shown back as
    JSON. Text with an "=" that does not open a JSON value is the query string (no JSON text holds an "=" there)."""

    default_error_messages = {"invalid": f"This is neither valid JSON nor a query string. Write {PARAMS_EXAMPLES}."}

    def to_python(self, value: Any) -> Any:
        text = value.strip() if isinstance(value, str) else ""
        if "=" in text and not text.startswith(("{", "[", '"')):
            if len(text) > self.MAX_LENGTH:
                raise forms.ValidationError(f"Keep this under {self.MAX_LENGTH} characters.")
            return authorization_params_from_query(text)
        return super().to_python(value)


class RequiredLabelBoundField(BoundField):
    """A field whose label says "required" while the field itself is not: a URL the provider type lacks must be
    given, but the form's clean() says so, after the issuer's discovery had its chance to fill it."""

    def label_tag(
        self,
        contents: str | None = None,
        attrs: dict[str, str | bool] | None = None,
        label_suffix: str | None = None,
        tag: str | None = None,
    ) -> SafeString:
        classes = str((attrs or {}).get("class", "")).split()
        if "required" not in classes:
            attrs = {**(attrs or {}), "class": " ".join([*classes, "required"])}
        return super().label_tag(contents, attrs, label_suffix, tag)
