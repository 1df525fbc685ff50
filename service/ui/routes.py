"""The trace pages: ``/ui`` (recent requests), ``/ui/requests/{id}``, ``/ui/stats``.

Server-rendered from Jinja2 templates with autoescape on (model text is hostile: a candidate's
``<script>`` stays text), inline CSS, no script, nothing fetched from elsewhere. Each page is
read and rendered off the event loop (:func:`run_blocking`), and is bounded: a page of rows, one
request, one stats table over at most :data:`source.SCAN_LIMIT` records. Not in the OpenAPI
schema. With API keys, a browser logs in once with a small form that sets an HttpOnly,
SameSite=Strict cookie for these pages only (:mod:`bestofk.service.middleware`).
"""

from __future__ import annotations

import hmac
import re
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bestofk.service.middleware import UI_COOKIE, UI_LOGIN, UI_PREFIX, is_ui_path, ui_token
from bestofk.service.records.format import compile_redactions
from bestofk.service.routes.common import runtime
from bestofk.service.ui import diff, listing, trace
from bestofk.service.ui.source import PAGE_SIZE, SCAN_LIMIT, Origin, Scan, Source
from bestofk.verifiers.base import run_blocking

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Pages hold prompts and model output: not for shared caches, and never framed elsewhere.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _source(request: Request) -> Source:
    rt = runtime(request)
    return Source(rt.history, rt.settings.record_dir)


def _patterns(request: Request) -> list[re.Pattern[str]]:
    return compile_redactions(runtime(request).settings.record_redact)


def _origin(request: Request, origin: Origin | None) -> Origin:
    rt = runtime(request)
    if origin is not None:
        return origin
    has_history = rt.history is not None and rt.history.size > 0
    return "records" if not has_history and rt.settings.record_dir else "recent"


def _context(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    return {
        "has_records": rt.settings.record_dir is not None,
        "history_size": rt.history.size if rt.history is not None else 0,
        "logged_in": bool(rt.settings.api_keys) and UI_COOKIE in request.cookies,
        "urlencode": urllib.parse.urlencode,
    }


@router.get("")
async def requests_page(
    request: Request,
    origin: Origin | None = None,
    profile: str | None = Query(default=None, max_length=200),
    model: str | None = Query(default=None, max_length=500),
    outcome: listing.Outcome | None = None,
    page: int = Query(default=0, ge=0, le=10_000),
) -> HTMLResponse:
    """The recent requests, newest first, filtered and paged."""
    where = _origin(request, origin)
    filters = listing.Filters(profile or None, model or None, outcome)
    source = _source(request)

    def render() -> HTMLResponse:
        return _page(
            "requests.html",
            origin=where,
            filters=filters,
            found=source.page(where, filters, page),
            page_size=PAGE_SIZE,
            scan_limit=SCAN_LIMIT,
            **_context(request),
        )

    return await run_blocking(render)


@router.get("/requests/{request_id}")
async def request_page(
    request: Request,
    request_id: str,
    a: int | None = Query(default=None, ge=0),
    b: int | None = Query(default=None, ge=0),
) -> HTMLResponse:
    """One request: prompt, the K candidates, every verdict, why the winner won, its timing."""
    if not _REQUEST_ID.fullmatch(request_id):
        return _page("missing.html", 404, request_id=request_id, **_context(request))
    source = _source(request)
    patterns = _patterns(request)

    def render() -> HTMLResponse:
        record = source.find(request_id)
        if record is None:
            return _page("missing.html", 404, request_id=request_id, **_context(request))
        shown = trace.trace(record, patterns)
        compared = diff.diff(shown, a, b) if a is not None and b is not None else None
        return _page("request.html", trace=shown, diff=compared, **_context(request))

    return await run_blocking(render)


@router.get("/stats")
async def stats_page(request: Request, origin: Origin | None = None) -> HTMLResponse:
    """``bestofk stats`` over the recent requests or the record files, with a chart."""
    where = _origin(request, origin)
    source = _source(request)

    def render() -> HTMLResponse:
        # The one computation of `bestofk stats`, which lives with the record tooling.
        from bestofk.tooling.records import stats

        scan = Scan()
        report = stats.compute(source.newest(where, scan))
        return _page(
            "stats.html",
            origin=where,
            report=report,
            bars=listing.chart(report.rows),
            scan=scan,
            scan_limit=SCAN_LIMIT,
            advice={r.profile: r.advice for r in report.rows if r.verifier == stats.ALL},
            **_context(request),
        )

    return await run_blocking(render)


def _next(target: str | None) -> str:
    # Only back to a page of ours: an open redirect would lend our name to phishing.
    target = target or ""
    parts = urllib.parse.urlsplit(target)
    if not parts.scheme and not parts.netloc and is_ui_path(parts.path) and "\\" not in target:
        return target
    return UI_PREFIX


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    """The form that takes an API key (only where the server has keys)."""
    if not runtime(request).settings.api_keys:
        return RedirectResponse(_next(next), status_code=303)
    return _page("login.html", next=_next(next), error=None, **_context(request))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the key; if good, set the pages' cookie and go back to the page asked for."""
    keys = runtime(request).settings.api_keys
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    target = _next((form.get("next") or [""])[0])
    if not keys:
        return RedirectResponse(target, status_code=303)
    if not any([hmac.compare_digest(key.encode(), k.encode()) for k in keys]):
        context = _context(request)
        return _page(
            "login.html", 401, next=target, error="That is not a key of this server.", **context
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        UI_COOKIE,
        ui_token(key),
        path=UI_PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the cookie."""
    response = RedirectResponse(UI_LOGIN, status_code=303)
    response.delete_cookie(UI_COOKIE, path=UI_PREFIX, httponly=True, samesite="strict")
    return response
