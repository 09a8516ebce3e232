"""The hub's static files and logo, never framed by another page.

JupyterHub's own pages send ``frame-ancestors 'none'``; its static files
and logo (plain ``StaticFileHandler``\\s) send nothing. On one web origin a
page a student serves could frame ``/hub/static/...`` and read, through the
frame, the cookies whose path is ``/hub/`` (``_xsrf`` among them), then
call the hub's API as whoever opened the page. These handlers add the same
refusal to be framed; :func:`protect` puts them in the hub's place.
"""

from jupyterhub.handlers.static import CacheControlStaticFilesHandler, LogoHandler

HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}


class _Frameless:
    def set_default_headers(self):
        super().set_default_headers()
        for name, value in HEADERS.items():
            self.set_header(name, value)


class FramelessStaticFiles(_Frameless, CacheControlStaticFilesHandler):
    """``/hub/static/…``: JupyterHub's, refusing to be framed."""


class FramelessLogo(_Frameless, LogoHandler):
    """``/hub/logo``: JupyterHub's, refusing to be framed."""


def protect(app) -> None:
    """Serve the hub's static files with :class:`FramelessStaticFiles` (unless its configuration names a class)."""
    settings = getattr(app, "tornado_settings", None)
    if isinstance(settings, dict):
        settings.setdefault("static_handler_class", FramelessStaticFiles)


def handlers(app) -> list:
    """The route of the logo, for ``Authenticator.get_handlers`` (whose routes come before the hub's)."""
    logo = getattr(app, "logo_file", None)
    return [(r"/logo", FramelessLogo, {"path": logo})] if logo else []
