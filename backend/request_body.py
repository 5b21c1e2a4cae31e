"""Write operations that take no request body refuse one instead of ignoring it."""

from __future__ import annotations

from fastapi import Depends, Request

from backend.errors import UnsupportedMediaType


async def refuse_request_body(request: Request) -> None:
    """A body sent to an operation that takes none was meant for something else; acting on the
    request anyway (revoking, cancelling, deleting) would hide the client's mistake.

    Reading the body also holds a chunked upload to the size limit (RequestLimitsMiddleware), which
    would otherwise never be read at all.
    """
    if await request.body():
        raise UnsupportedMediaType("This operation takes no request body; send none.")


# For the route decorator: `@router.post(..., dependencies=[NO_REQUEST_BODY])`.
NO_REQUEST_BODY = Depends(refuse_request_body)
