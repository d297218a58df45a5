"""Of scripts/api_check.sh: no schema-violating request started anything.

Reads schemathesis' NDJSON report of the negative-mode run and the API's OpenAPI document, and
checks every request the server answered 2xx on an operation that changes state (a POST: kick,
stop, restart, abandon): its path parameters, query and body must all be inside the document (a
missing body is, where the body is optional). Prints how many such requests there were, and
exits 1 naming any request outside the schema that was accepted.

Usage: python api_check_started.py <openapi.json> <report.ndjson>  (with the venv's python:
it needs `jsonschema_rs`, which schemathesis brings).
"""

import base64
import json
import re
import sys
from urllib.parse import parse_qsl, unquote, urlsplit

import jsonschema_rs


def interactions(path):
    """Every (request, response) pair in the report."""
    found = []

    def walk(o):
        if isinstance(o, dict):
            if isinstance(o.get("request"), dict) and isinstance(o.get("response"), dict):
                found.append((o["request"], o["response"]))
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    with open(path) as f:
        for line in f:
            walk(json.loads(line))
    return found


def body_of(request):
    body = request.get("body")
    if body is None:
        return None
    if isinstance(body, dict) and "$base64" in body:
        return base64.b64decode(body["$base64"])
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def main():
    doc = json.load(open(sys.argv[1]))
    pairs = interactions(sys.argv[2])
    # Path templates as regexes: /executions/{id}/stop -> ^/executions/(?P<id>[^/]+)/stop$
    ops = []
    for template, item in doc["paths"].items():
        for method, op in item.items():
            if method != "post":
                continue
            pattern = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"
            ops.append((re.compile(pattern), template, op))

    def validate(value, schema):
        # The document's own components resolve the $refs.
        full = dict(schema)
        full["components"] = doc.get("components", {})
        jsonschema_rs.Draft202012Validator(full).validate(value)

    accepted, outside = 0, []
    for request, response in pairs:
        if request["method"] != "POST" or not 200 <= response["status_code"] < 300:
            continue
        url = urlsplit(request["uri"])
        for pattern, template, op in ops:
            m = pattern.match(url.path)
            if m:
                break
        else:
            outside.append((request, "a path the document does not have"))
            continue
        accepted += 1
        why = None
        try:
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    raw = unquote(m.group(p["name"]))
                    value = raw
                    if p["schema"].get("type") == "integer":
                        value = int(raw) if re.fullmatch(r"-?\d+", raw) else raw
                    validate(value, p["schema"])
            if parse_qsl(url.query) and not any(p["in"] == "query" for p in op.get("parameters", [])):
                why = "a query the operation does not take"
            body = body_of(request)
            if body is not None and body.strip():
                content = op.get("requestBody", {}).get("content", {}).get("application/json")
                if content is None:
                    why = "a body the operation does not take"
                else:
                    validate(json.loads(body), content["schema"])
            elif op.get("requestBody", {}).get("required"):
                why = "no body, which the operation requires"
        except (jsonschema_rs.ValidationError, ValueError) as e:
            why = str(e).splitlines()[0]
        if why:
            outside.append((request, why))

    print(f"api_check: {accepted} state-changing requests were accepted (2xx) in negative mode; all inside the schema"
          if not outside else f"api_check: {len(outside)} schema-violating request(s) were accepted:")
    for request, why in outside:
        body = body_of(request)
        print(f"  {request['method']} {request['uri']} body={body!r}: {why}")
    sys.exit(1 if outside else 0)


if __name__ == "__main__":
    main()
