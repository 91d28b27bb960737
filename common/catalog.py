"""The records of the event-type catalog: declaring a type, changing it, and a type as lists show it."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hookpost.common.matching import validate_type
from hookpost.common.models import UtcDatetime

CATALOG_DAYS = 30
"""A type is known when declared or seen in this many days; the counts shown cover them."""


class EventTypeDeclare(BaseModel):
    """Declare an event type: its title, description, and optionally a JSON Schema (draft 2020-12) for the
    changes' ``data``, enforced by fan-out only with ``enforce``."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    name: str = Field(min_length=1, max_length=200, description="the event type, e.g. order.created")
    title: str = Field(default="", max_length=200, description="for people, e.g. 'Order created'")
    description: str = Field(default="", max_length=2000)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema",
                                           description="JSON Schema (draft 2020-12) of the change's data")
    enforce: bool = Field(default=False, description="set aside changes whose data breaks the schema")
    deprecated: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_type(value)


class EventTypeUpdate(BaseModel):
    """The fields of a declared type that change; those left out stay. ``schema: null`` removes the schema."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    title: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    enforce: bool | None = None
    deprecated: bool | None = None


class EventTypeView(BaseModel):
    """An event type as the catalog shows it: declared, seen in the last 30 days, or both."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    name: str
    title: str = ""
    description: str = ""
    declared: bool = False
    deprecated: bool = False
    enforce: bool = False
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    count: int = Field(default=0, description="changes seen in the last 30 days (approximate)")
    first_seen: UtcDatetime | None = Field(default=None, description="first seen within the last 30 days")
    last_seen: UtcDatetime | None = None
