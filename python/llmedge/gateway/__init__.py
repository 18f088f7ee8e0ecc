"""An OpenAI-compatible gateway built on llmedge (``pip install 'llmedge[service]'``).

``create_app(settings=None)`` returns the FastAPI application; without
``settings`` it reads the ``LLMEDGE_*`` environment variables (see
``llmedge.gateway.app``). Run it under uvicorn or gunicorn::

    uvicorn --factory llmedge.gateway:create_app
    gunicorn -k uvicorn.workers.UvicornWorker -w 4 'llmedge.gateway:create_app()'
"""

from llmedge.gateway.app import Settings, create_app

__all__ = ["Settings", "create_app"]
