"""Assertions shared by test modules."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code
    assert problem["type"] == f"urn:shiptrack:problem:{code}"
    assert problem["status"] == status
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem
