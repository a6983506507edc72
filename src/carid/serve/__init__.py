"""`carid serve`: a REST API and a web page over one model bundle (FastAPI + uvicorn).

    api.py      create_app / build_app / run_server, ServeSettings, the endpoints
    limits.py   what an upload must be: size, type sniffed from the bytes, pixel count
    static/     the web page (index.html, app.js, style.css; no build step, nothing from a CDN)

Imports without torch (the slim install); see docs/serve.md.
"""

from carid.serve.api import ServeError, ServeSettings, build_app, create_app, run_server
from carid.serve.limits import ApiError, UploadError, UploadLimits, check_upload

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
