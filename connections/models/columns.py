"""The models' own columns, for the few places that write their SQL by hand (the token endpoint's read, the engine's
fenced update, the audit log's insert)."""

from django.core.exceptions import FieldDoesNotExist
from django.db.models import Field, Model


def _field_and_column(model: type[Model], name: str) -> tuple[Field, str]:
    field = model._meta.get_field(name)
    if isinstance(field, Field) and field.column is not None:
        return field, field.column
    # A reverse relation or a many-to-many field: no column of the model's table.
    raise FieldDoesNotExist(f"{model._meta.label}.{name} is no column of {model._meta.db_table}.")


def concrete_field(model: type[Model], name: str) -> Field:
    """The model's field of that name (or attname), one with a column of the model's table."""
    return _field_and_column(model, name)[0]


def column_name(model: type[Model], name: str) -> str:
    """The column (unquoted) of the model's field of that name (or attname)."""
    return _field_and_column(model, name)[1]
