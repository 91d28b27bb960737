"""Conversion between pydantic models and MongoDB documents (``id`` ↔ ``_id``), and filters written so that the
local stand-in reads them as MongoDB does."""

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


def grouped(query: dict[str, Any]) -> dict[str, Any]:
    """Return ``query`` with each ``$or`` that stands beside other conditions moved into an ``$and`` (at every
    level): the same filter on MongoDB.

    The local stand-in joins such an ``$or``'s branches to the conditions beside it without parentheses
    (``_id = k AND a OR b``), so an update, a count or an aggregation matched documents that fail those
    conditions; inside an ``$and`` it keeps them apart. ``find`` was not affected.

    >>> grouped({"_id": "k", "$or": [{"a": 1}, {"b": 2}]})
    {'_id': 'k', '$and': [{'$or': [{'a': 1}, {'b': 2}]}]}
    """
    out: dict[str, Any] = {}
    for key, value in query.items():
        out[key] = [grouped(q) for q in value] if key in ("$or", "$and", "$nor") else value
    if "$or" in out and len(out) > 1:
        out["$and"] = [*out.get("$and", []), {"$or": out.pop("$or")}]
    return out


def one_of(field: str, values: list[Any]) -> dict[str, Any]:
    """``field`` equal to one of ``values``, written as an ``$or`` of equalities: the same as ``{field: {"$in":
    values}}`` on MongoDB, which the stand-in, beside other conditions, cannot check in SQL (it reads every
    candidate document into Python instead). Put it inside an ``$and`` (:func:`grouped`).

    >>> one_of("status", ["New", "Retrying"])
    {'$or': [{'status': 'New'}, {'status': 'Retrying'}]}
    """
    return {"$or": [{field: v} for v in values]}
