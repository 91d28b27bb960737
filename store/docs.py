"""Conversion between pydantic models and MongoDB documents (``id`` ↔ ``_id``)."""

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def to_doc(model: BaseModel) -> dict[str, Any]:
    """Return ``model`` as a MongoDB document, its ``id`` stored as ``_id``."""
    doc = model.model_dump()
    doc["_id"] = doc.pop("id")
    return doc


def from_doc(cls: type[M], doc: dict[str, Any]) -> M:
    """Build a ``cls`` from a MongoDB document."""
    data = dict(doc)
    data["id"] = data.pop("_id")
    return cls.model_validate(data)
