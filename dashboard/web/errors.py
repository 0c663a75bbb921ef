"""The API's error shape, shared by every blueprint: JSON {"error": <code>, "message": <text>}."""
from __future__ import annotations

from flask import Response, jsonify


def api_error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="region-dashboard"'
    return response
