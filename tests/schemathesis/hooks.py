"""Schemathesis hooks for Chorus (loaded by run.sh through SCHEMATHESIS_HOOKS).

gateway/openapi.json states one constraint that JSON Schema cannot: `x-max-bytes`,
a bound on a string's UTF-8 encoding (the server's limits on topics, events,
idempotency keys and user ids are in bytes, as Centrifugo's are; the envelope and
the v2 binary frame carry their length in one byte). `maxLength` counts
characters, so a string of 128 two-byte characters is valid to JSON Schema and
refused by the server, as the document says.

This drops the generated cases whose only claim to validity is that gap: a body
string within `maxLength` characters but over `x-max-bytes` bytes. Cases valid
or invalid by both measures are kept, so nothing the server gets wrong is hidden.
The Rust API tests check the byte limits at their edges (gateway/tests/api/).
"""

import json
import os

import schemathesis

_SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "gateway", "openapi.json")


def _byte_limits():
    """{(METHOD, path): {field: (max_bytes, max_chars)}} for request-body fields."""
    with open(_SPEC, encoding="utf-8") as f:
        doc = json.load(f)

    limits = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            while isinstance(schema, dict) and "$ref" in schema:
                target = doc
                for part in schema["$ref"].lstrip("#/").split("/"):
                    target = target[part]
                schema = target
            if not isinstance(schema, dict):
                continue
            fields = {
                name: (prop["x-max-bytes"], prop.get("maxLength"))
                for name, prop in schema.get("properties", {}).items()
                if "x-max-bytes" in prop
            }
            if fields:
                limits[(method.upper(), path)] = fields
    return limits


LIMITS = _byte_limits()


@schemathesis.hook
def filter_case(context, case):
    fields = LIMITS.get((case.method.upper(), case.operation.path))
    if not fields or not isinstance(case.body, dict):
        return True
    for name, (max_bytes, max_chars) in fields.items():
        value = case.body.get(name)
        if not isinstance(value, str):
            continue
        within_chars = max_chars is None or len(value) <= max_chars
        over_bytes = len(value.encode("utf-8", "surrogatepass")) > max_bytes
        if within_chars and over_bytes:
            return False
    return True
