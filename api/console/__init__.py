"""The web console: static pages served at `/` that use the public API only, as any client.

The assets ship inside this package (no CDN). The page itself needs no key: it asks for one
when the API does, keeps it in the tab's sessionStorage and sends it as a Bearer token.
"""

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from schemas.settings import Settings

STATIC = Path(__file__).parent / "static"
ASSETS = "/console-assets"

router = APIRouter(include_in_schema=False)


def security_headers(settings: Settings) -> dict[str, str]:
    """Scripts, styles and connections to this origin only (and to the object store that
    downloads redirect to); images also from blobs the page builds and data URLs."""
    connect = ["'self'"]
    if settings.storage_backend == "s3":
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        if public:
            parts = urlsplit(public)
            connect.append(f"{parts.scheme}://{parts.netloc}")
        else:
            connect.append("https://*.amazonaws.com")
    policy = (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        f"connect-src {' '.join(connect)}; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


@router.get("/")
async def console(request: Request) -> FileResponse:
    settings: Settings = request.app.state.context.settings
    return FileResponse(STATIC / "index.html", headers=security_headers(settings))


def install_console(app: FastAPI) -> None:
    """Serve the console at / and its assets under ASSETS."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="console-assets")
