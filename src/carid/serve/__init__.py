"""`carid serve`: a REST API and a web page over one model bundle (FastAPI + uvicorn).

    api.py       create_app / build_app, the endpoints and their error answers
    settings.py  ServeSettings (every default), the allowed hosts and the API key
    security.py  the guards in front of the endpoints: allowed hosts, API key, concurrency limit,
                 body timeout, security headers
    server.py    run_server: uvicorn with a header timeout (GuardedH11Protocol), worker processes
    limits.py    what an upload must be: size, type sniffed from the bytes, pixel count; decode errors
    static/      the web page (index.html, app.js, style.css; no build step, nothing from a CDN)

Imports without torch (the slim install); see docs/serve.md.
"""

from carid.serve.api import build_app, create_app
from carid.serve.limits import ApiError, UploadError, UploadLimits, check_upload
from carid.serve.server import run_server
from carid.serve.settings import ServeError, ServeSettings

__all__ = [
    "ApiError",
    "ServeError",
    "ServeSettings",
    "UploadError",
    "UploadLimits",
    "build_app",
    "check_upload",
    "create_app",
    "run_server",
]
