"""`artnote review`: a local web page where curators review annotations.

Routes:
  GET  /                          the grid: thumbnails, status badges, filters (status,
                                  dominant emotion, folder, full-text query), least sure first
  GET  /image/{id}                one image: preview, current values, emotion bars,
                                  provenance, review history, the edit and approve forms
  GET  /image/{id}/thumb.jpg      a bounded JPEG (256 px), made once per content
  GET  /image/{id}/preview.jpg    a bounded JPEG (1024 px)
  POST /image/{id}/save           correct fields (artnote.corrections.correct), optionally
                                  approve after (artnote.corrections.approve)
  POST /image/{id}/approve        approve as it stands (artnote.corrections.approve)
  GET  /static/...                the page's CSS and keyboard script

Writes are exactly those of `artnote correct` and `artnote approve`: same validation,
same append-only reviews, the reviewer's name kept. Every form carries the revision it
was made from (newest review id and current annotation id of the content); a save whose
revision has since changed is refused with 409 and the page shows the other edit: the
check is made in the write transaction itself, under the catalog's write lock, so it holds
between servers and against `artnote correct` too. Edits are recorded with source "web".
See web/security.py for the Host check, the CSRF token and the body limit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from artnote.catalog import Catalog, open_catalog
from artnote.catalog.models import REVIEW_FIELDS
from artnote.corrections import ALT_TEXT_MAX, CorrectionError, approve, correct
from artnote.emotions import EMOTIONS, normalise_emotion
from artnote.errors import ArtnoteError, ConflictError
from web import thumbnails
from web.review_image import ImageDetail, image_detail, image_file, parse_revision
from web.review_queries import (
    FORM_PREFIX,
    MAX_TERMS,
    MIN_PREFIX,
    SEARCH_LIMIT,
    STATUSES,
    Filters,
    Lister,
    search_terms,
)
from web.security import CSRF_FIELD, BodyLimit, Csrf, HostCheck, SecurityHeaders, same_origin

HERE = Path(__file__).resolve().parent
PER_PAGE = 60
MAX_PAGE = 100_000
ALT_TEXT_AIM = 125
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
TEXT_FIELDS = ("alt_text", "description", "explanation")
DEFAULT_MAX_PIXELS = 400_000_000  # artnote.config's [scan] max_pixels default
DONE = {  # ?done=... after a redirect: fixed messages, never text from the request
    "saved": "Saved.",
    "approved": "Approved.",
    "saved-approved": "Saved and approved.",
    "held": "Approved, except the explanation: it was written for another emotion "
    "(save it, edited or as it is, to approve it).",
    "unchanged": "Nothing changed: no field differs from what was there.",
}


@dataclass
class Outcome:
    """What a POST came to: a redirect on success, else a page to render again."""

    status: int
    done: str = ""
    error: str = ""
    detail: ImageDetail | None = None
    submitted: dict[str, str] = field(default_factory=dict)
    conflict: list[dict[str, Any]] | None = None
    reannotated: bool = False


class Review:
    """The application's state: one shared catalog engine, the grid's caches, the reviewer."""

    def __init__(self, catalog: Catalog, by: str | None, cache: Path, max_pixels: int) -> None:
        self.catalog = catalog
        self.by = by
        self.thumbs = cache / "thumbnails"
        self.max_pixels = max_pixels
        self.lister = Lister(catalog)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["basename"] = os.path.basename
        self.env.globals.update(
            emotions=EMOTIONS,
            statuses=STATUSES,
            search_limit=SEARCH_LIMIT,
            max_terms=MAX_TERMS,
            min_prefix=MIN_PREFIX,
            alt_aim=ALT_TEXT_AIM,
            alt_max=ALT_TEXT_MAX,
        )
        self.csrf = Csrf("artnote_csrf")

    # --- pages --------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        token, cookie = self.csrf.token(request)
        context.update(csrf_field=CSRF_FIELD, csrf=token, by=self.by, where=self.catalog.where)
        response = HTMLResponse(self.env.get_template(name).render(**context), status)
        response.headers["cache-control"] = "no-store"
        if cookie is not None:
            self.csrf.remember(response, cookie)
        return response

    async def grid(self, request: Request) -> Response:
        filters = Filters.from_params(request.query_params)
        page = _page_number(request.query_params.get("page"))
        found = await run_in_threadpool(self.lister.page, filters, page, PER_PAGE)
        folders = await run_in_threadpool(self.lister.folders)
        pages = max(1, math.ceil(found.total / PER_PAGE))
        return self.render(
            request,
            "grid.html",
            found=found,
            filters=filters,
            page=page,
            pages=pages,
            folders=folders,
            first=(page - 1) * PER_PAGE,
            ignored_terms=search_terms(filters.q)[1],
        )

    async def image(self, request: Request) -> Response:
        image_id = request.path_params["image_id"]
        detail = await run_in_threadpool(self._detail, image_id)
        if detail is None:
            return _not_found()
        done = DONE.get(request.query_params.get("done", ""), "")
        return await self._image_page(request, detail, message=done)

    async def _image_page(
        self, request: Request, detail: ImageDetail, status: int = 200, **context: Any
    ) -> Response:
        filters = Filters.from_params(request.query_params)
        if request.method == "POST":
            filters = Filters.from_params(await request.form(), FORM_PREFIX)
        before, after, position = await run_in_threadpool(
            self.lister.neighbours, filters, detail.image_id
        )
        values = dict(detail.values or {})
        submitted = dict(context.pop("submitted", None) or {})
        if chosen := normalise_emotion(submitted.pop("emotion", "")):
            values["dominant_emotion"] = chosen
        values.update(submitted)  # a refused save shows what the curator typed
        changed = await run_in_threadpool(_file_changed, detail)
        stale = None
        if detail.sha256 and detail.values is not None:
            stale = await run_in_threadpool(
                lambda: self.catalog.stale_explanations([detail.sha256]).get(detail.sha256)
            )
        context.setdefault("message", "")
        context.setdefault("error", "")
        context.setdefault("conflict", None)
        context.setdefault("reannotated", False)
        context.setdefault("mine", None)
        return self.render(
            request,
            "image.html",
            status,
            detail=detail,
            values=values,
            filters=filters,
            before=before,
            after=after,
            position=position,
            stale=stale,
            changed=changed,
            **context,
        )

    def _detail(self, image_id: int) -> ImageDetail | None:
        with self.catalog.engine.connect() as conn:
            return image_detail(conn, image_id)

    async def picture(self, request: Request) -> Response:
        image_id = request.path_params["image_id"]
        size = thumbnails.THUMB if request.url.path.endswith("/thumb.jpg") else thumbnails.PREVIEW
        data = await run_in_threadpool(self._jpeg, image_id, size)
        if data is None:
            return _not_found()
        return Response(
            data,
            media_type="image/jpeg",
            headers={"cache-control": "private, max-age=3600"},
        )

    def _jpeg(self, image_id: int, size: int) -> bytes | None:
        with self.catalog.engine.connect() as conn:
            found = image_file(conn, image_id)
        if found is None or found["status"] == "missing":
            return None
        try:
            stat = os.stat(found["path"])
            unchanged = stat.st_size == found["size"] and stat.st_mtime_ns == found["mtime_ns"]
            if not unchanged:
                # The file is no longer the content the catalog annotated: never show its
                # new pixels beside the old annotation; the copy made from the annotated
                # content, when there is one, still is that content.
                return thumbnails.cached(self.thumbs, found["sha256"], size)
            return thumbnails.jpeg_of(
                self.thumbs,
                found["path"],
                found["sha256"],
                size,
                max_pixels=self.max_pixels,
                unchanged=True,
            )
        except (OSError, ArtnoteError):
            return None

    # --- writes -------------------------------------------------------------------------

    async def save(self, request: Request) -> Response:
        return await self._write(request, approving=False)

    async def approve(self, request: Request) -> Response:
        return await self._write(request, approving=True)

    async def _write(self, request: Request, *, approving: bool) -> Response:
        form = await request.form()
        image_id = request.path_params["image_id"]
        submitted = {}
        if not approving:
            for name in (*TEXT_FIELDS, "emotion"):
                value = form.get(name)
                if isinstance(value, str):
                    submitted[name] = value.replace("\r\n", "\n").replace("\r", "\n")
        if not self.csrf.valid(request, form.get(CSRF_FIELD)) or not same_origin(request):
            # Nothing is written. The page comes back with a fresh token and, in the form,
            # the text that was sent, so that a curator whose token went stale (a restart,
            # a new cookie) loses nothing: checking it and saving again is enough.
            detail = await run_in_threadpool(self._detail, image_id)
            if detail is None:
                return _not_found()
            return await self._image_page(
                request,
                detail,
                403,
                submitted=submitted,
                error="Not saved: this form did not come from this page, or it is stale "
                "(the server restarted or its cookie changed). Check the text below and "
                "submit again.",
            )
        outcome = await run_in_threadpool(
            self._apply,
            image_id,
            form.get("base"),
            submitted,
            approve_after=approving or form.get("action") == "save-approve",
            keep_explanation=form.get("keep_explanation") == "1",
        )
        if outcome.status == 404 or outcome.detail is None:
            return _not_found()
        if outcome.status == 303:
            filters = Filters.from_params(form, FORM_PREFIX)
            target = f"/image/{image_id}?{filters.query(done=outcome.done)}"
            return RedirectResponse(target, status_code=303)
        return await self._image_page(
            request,
            outcome.detail,
            outcome.status,
            # A refused save (409) keeps the form on the catalog's values, the other
            # person's edit among them; the curator's own text is shown beside it.
            submitted=None if outcome.conflict is not None else outcome.submitted,
            mine=outcome.submitted if outcome.conflict is not None else None,
            error=outcome.error,
            conflict=outcome.conflict,
            reannotated=outcome.reannotated,
        )

    def _apply(
        self,
        image_id: int,
        base: object,
        submitted: dict[str, str],
        *,
        approve_after: bool,
        keep_explanation: bool,
    ) -> Outcome:
        ref = str(image_id)
        detail = self._detail(image_id)
        if detail is None:
            return Outcome(404)
        if detail.values is None:
            return Outcome(400, error="This image has no annotation to review.", detail=detail)
        seen = parse_revision(base)
        if seen is None:
            return Outcome(400, error="The form lacks its revision; reload.", detail=detail)
        if seen != parse_revision(detail.base):
            return self._conflict(detail, seen, submitted)
        changes = _changes(detail.values, submitted, keep_explanation)
        held = False
        try:
            # The revision is checked again inside the write transaction, under the
            # catalog's write lock: another server or `artnote correct` may have written
            # since the read above. A save and approve is one transaction.
            if changes:
                correct(
                    self.catalog,
                    ref,
                    changes,
                    self.by,
                    source="web",
                    expected=seen,
                    then_approve=approve_after,
                )
                if approve_after and detail.sha256:
                    held = detail.sha256 in self.catalog.stale_explanations([detail.sha256])
            elif approve_after:
                report = approve(self.catalog, [ref], self.by, source="web", expected={ref: seen})
                held = bool(report.held_back)
        except ConflictError:
            now = self._detail(image_id)
            if now is None:
                return Outcome(404)
            return self._conflict(now, seen, submitted)
        except CorrectionError as exc:
            return Outcome(400, error=str(exc), detail=detail, submitted=submitted)
        if approve_after and held:
            return Outcome(303, done="held", detail=detail)
        if approve_after:
            return Outcome(303, done="saved-approved" if changes else "approved", detail=detail)
        return Outcome(303, done="saved" if changes else "unchanged", detail=detail)

    @staticmethod
    def _conflict(detail: ImageDetail, seen: tuple[int, int], submitted: dict[str, str]) -> Outcome:
        now = parse_revision(detail.base)
        assert now is not None
        return Outcome(
            409,
            error="Not saved: this image changed since you opened it.",
            detail=detail,
            submitted=submitted,
            conflict=[r for r in detail.history if r["id"] > seen[0]],
            reannotated=seen[1] != now[1],
        )


def _changes(
    current: dict[str, Any], submitted: dict[str, str], keep_explanation: bool
) -> dict[str, str | None]:
    """The fields whose submitted value differs from the current one (the form sends all):
    those become corrections, as the CSV import turns only changed cells into them."""
    out: dict[str, str | None] = {}
    for name in TEXT_FIELDS:
        value = submitted.get(name)
        if value is None:
            continue
        if value.strip() != (current.get(name) or "").strip():
            out[name] = value
        elif name == "explanation" and keep_explanation:
            out[name] = value  # the same text, now written for the current emotion
    emotion = submitted.get("emotion")
    if emotion and normalise_emotion(emotion) != current.get("dominant_emotion"):
        out["emotion"] = emotion
    assert set(out) <= set(REVIEW_FIELDS)
    return out


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _page_number(text: str | None) -> int:
    if not (text and text.isascii() and text.isdigit() and len(text) < 8):
        return 1  # not str.isdigit() alone: it takes '²', which int() refuses
    return min(MAX_PAGE, max(1, int(text)))


def _file_changed(detail: ImageDetail) -> bool:
    """Whether the file is no longer the one the catalog hashed (size or mtime differ)."""
    if detail.file_status == "missing" or not detail.sha256:
        return False
    try:
        stat = os.stat(detail.path)
    except OSError:
        return False
    return stat.st_size != detail.size or stat.st_mtime_ns != detail.mtime_ns


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404)


def create_app(
    catalog_url: str,
    *,
    by: str | None,
    allowed_hosts: list[str],
    cache_dir: Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    any_ip_port: int | None = None,
) -> Starlette:
    """The review application over the catalog at `catalog_url` (which must exist).

    `allowed_hosts`: the Host header values it answers ('127.0.0.1:8765', ...);
    `any_ip_port`: also answer any IP address with this port (a server bound to 0.0.0.0
    or ::, reached at one of the machine's addresses);
    `cache_dir`: where thumbnails are kept (under thumbnails/)."""
    catalog = open_catalog(catalog_url, create=False)
    review = Review(catalog, by, Path(cache_dir), max_pixels)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        catalog.close()

    image = "/image/{image_id:int}"
    routes = [
        Route("/", review.grid, methods=["GET"]),
        Route(image, review.image, methods=["GET"]),
        Route(image + "/thumb.jpg", review.picture, methods=["GET"]),
        Route(image + "/preview.jpg", review.picture, methods=["GET"]),
        Route(image + "/save", review.save, methods=["POST"]),
        Route(image + "/approve", review.approve, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(HostCheck, allowed=allowed_hosts, any_ip_port=any_ip_port),
        Middleware(BodyLimit),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.review = review
    return app


def allowed_hosts_for(host: str, port: int) -> list[str]:
    """Host header values a server bound to host:port answers: 127.0.0.1 and localhost,
    the address given, and for a wildcard address this machine's names."""
    names = {"127.0.0.1", "localhost", host}
    if host in WILDCARD_HOSTS:
        names |= {socket.gethostname(), socket.getfqdn()}
        with contextlib.suppress(OSError):
            names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    out = []
    for name in sorted(n for n in names if n):
        try:
            literal = ipaddress.ip_address(name).version == 6
        except ValueError:
            literal = False
        out.append(f"[{name}]:{port}" if literal else f"{name}:{port}")
    return out
