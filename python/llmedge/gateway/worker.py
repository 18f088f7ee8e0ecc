"""A gunicorn worker for the gateway: uvicorn's, with the header timeout of
:class:`llmedge.gateway.server.HeaderTimeoutProtocol`::

    gunicorn -k llmedge.gateway.worker.UvicornWorker -w 4 'llmedge.gateway:create_app()'
"""

from __future__ import annotations

from typing import Any

from uvicorn.workers import UvicornWorker as _UvicornWorker


class UvicornWorker(_UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "http": "llmedge.gateway.server:HeaderTimeoutProtocol",
    }
