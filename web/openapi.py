"""The OpenAPI 3.1 document of ``/api/v1``, generated from :data:`hookpost.web.api.ROUTES` and the pydantic
models they name (never written by hand)."""

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter

from hookpost.web.api import PREFIX, ROUTES, Route
from hookpost.web.problems import PROBLEM_TYPE, Problem

REF = "#/components/schemas/{model}"
ROLE_TEXT = {"viewer": "viewer, operator or admin", "operator": "operator or admin", "admin": "admin",
             "publisher": "publisher or admin"}


class _Schemas:
    """Collects component schemas while routes are described."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, tp: Any, mode: str) -> dict[str, Any]:
        """Return a schema for ``tp`` (a model or a list of models), registering the models as components."""
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            schema = tp.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
            self.components.update(schema.pop("$defs", {}))
            self.components[tp.__name__] = schema
            return {"$ref": REF.format(model=tp.__name__)}
        schema = TypeAdapter(tp).json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        self.components.update(schema.pop("$defs", {}))
        return schema


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}}}


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1,
                                                                    "maxLength": 200}}
        for name in re.findall(r"{(\w+)}", route.path)]
    for p in route.query:
        schema = {"type": "array", "items": p.schema, "maxItems": 4} if p.repeat else p.schema
        params.append({"name": p.name, "in": "query", "required": False, "description": p.description,
                       "schema": schema, **({"style": "form", "explode": True} if p.repeat else {})})
    op: dict[str, Any] = {
        "operationId": route.op_id,
        "summary": route.summary,
        "description": f"Role: {ROLE_TEXT[route.role.value]}.",
        "tags": [route.path.strip("/").split("/")[0]],
        "parameters": params,
        "responses": {},
    }
    if route.body is not None:
        op["requestBody"] = {"required": route.body_required,
                             "content": {"application/json": {"schema": schemas.ref(route.body, "validation")}}}
    for status in (route.status, *route.also):
        if route.response is None:
            op["responses"][str(status)] = {"description": route.summary}
        else:
            op["responses"][str(status)] = {
                "description": route.summary,
                "content": {"application/json": {"schema": schemas.ref(route.response, "serialization")}}}
    errors = {"401": "no, malformed, unknown or revoked token", "403": "the token's role may not do this",
              "429": "too many failed authentications from this address",
              "503": "the store or the broker is unreachable"}
    if route.query or route.body is not None or "{" in route.path:
        errors["400"] = "malformed input (the detail names the field)"
    if "{" in route.path:
        errors["404"] = "no such id"
    if route.body is not None:
        errors["413"] = "body too large"
        errors["415"] = "body is not JSON"
    errors.update({str(status): text for status, text in route.errors})
    for status, text in sorted(errors.items()):
        op["responses"][status] = _problem(text)
    return op


def build_openapi(title: str = "Hookpost API", version: str = "1") -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of ``/api/v1``."""
    schemas = _Schemas()
    schemas.ref(Problem, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Hookpost's management API. Every call needs `Authorization: Bearer <token>` "
                                "('hookpost tokens create'). Errors are application/problem+json (RFC 9457)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas.components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
