"""Templates and static files, loaded once per process.

Imports Jinja2, segno and http.wire (content types). Templates autoescape everything
(`autoescape=True` for every file, not by extension): a link, a label or an e-mail is text on
the page, whatever it contains. An undefined name in a template is an error, not an empty
string. Static files are read once; their
URLs carry a digest of their content (`/static/panelsrv.3f2a9c1b.css`), so they can be cached
for a year and a new release is fetched at once.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any, NamedTuple

import jinja2
import segno

from panelsrv.http import wire

_STATIC_TYPES = {".css": wire.CSS, ".js": wire.JS}


class Asset(NamedTuple):
    path: bytes  # the URL path, with the content's digest
    body: bytes
    content_type: bytes  # a whole Content-Type header line


def load_assets() -> dict[str, Asset]:
    """Every file under web/static, by its plain name (`panelsrv.css`)."""
    assets = {}
    for entry in resources.files("panelsrv.web").joinpath("static").iterdir():
        name = entry.name
        stem, dot, ext = name.rpartition(".")
        if not dot or "." + ext not in _STATIC_TYPES:
            continue
        body = entry.read_bytes()
        tag = hashlib.sha256(body).hexdigest()[:12]
        path = f"/static/{stem}.{tag}.{ext}".encode()
        assets[name] = Asset(path, body, _STATIC_TYPES["." + ext])
    return assets


def qr_data_uri(text: str) -> str:
    """A QR code of `text` as an SVG data: URI (the CSP allows data: images only)."""
    return str(segno.make(text, error="m").svg_data_uri(scale=5, border=2))


class Views:
    """The Jinja2 environment with every template compiled at start-up."""

    def __init__(self, assets: dict[str, Asset]) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("panelsrv.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["static"] = {n: a.path.decode() for n, a in assets.items()}
        self._templates = {
            name: self.env.get_template(name) for name in self.env.list_templates(["html"])
        }

    def render(self, name: str, **values: Any) -> bytes:
        return self._templates[name].render(**values).encode()
