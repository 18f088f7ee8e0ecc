"""An OpenAI-compatible gateway built on llmedge (``pip install 'llmedge[service]'``).

``create_app(settings=None)`` returns the FastAPI application; without
``settings`` it reads the ``LLMEDGE_*`` environment variables (see
``llmedge.gateway.app``). Run it with ``llmedge serve`` or under uvicorn or
gunicorn::

    llmedge serve --upstream http://127.0.0.1:8001/v1 --workers 4
    uvicorn --factory llmedge.gateway:create_app \
            --http llmedge.gateway.server:HeaderTimeoutProtocol
    gunicorn -k llmedge.gateway.worker.UvicornWorker -w 4 'llmedge.gateway:create_app()'

(the header-timeout protocol and worker refuse slow-loris clients; see
``llmedge.gateway.server``). The application is imported on first use of
``create_app`` or ``Settings``, so that ``llmedge.gateway.cli`` can say which
dependency is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmedge.gateway.app import Settings, create_app

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'llmedge.gateway' has no attribute {name!r}")
    from llmedge.gateway.cli import missing_service_modules

    missing = missing_service_modules()
    if missing:
        raise ImportError(
            f"llmedge.gateway needs the optional dependencies of llmedge[service] "
            f"(missing: {', '.join(missing)}); install them with: pip install 'llmedge[service]'"
        )
    from llmedge.gateway import app

    return getattr(app, name)
