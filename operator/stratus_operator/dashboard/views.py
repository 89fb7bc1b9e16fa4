"""The dashboard's pages (aiohttp), served beside the console proxy on its port. Every
call to the API server is made with the signed-in user's token (userapi.py); a refusal is
shown with the API server's own message and status."""

from __future__ import annotations

import collections
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
import markupsafe
from aiohttp import web

from stratus_api.v1alpha1.instance import VERBS, verb_patch
from stratus_operator.dashboard import present
from stratus_operator.dashboard.live import Render, Seen, Source, snapshot, stream
from stratus_operator.dashboard.sessions import COOKIE, Sealer, Session
from stratus_operator.dashboard.userapi import CORE, ApiError, UserApi
from stratus_operator.services.access import Access
from stratus_operator.services.kube import Kube, KubeError, NotLoggedIn

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    def __init__(
        self, kube: Kube, access: Access, sealer: Sealer, session_seconds: float,
        live_streams_per_user: int = 16,
    ) -> None:  # fmt: skip
        self._kube = kube
        self._access = access
        self._sealer = sealer
        self._session_seconds = session_seconds
        self._live_limit = live_streams_per_user
        self._live: collections.Counter[str] = collections.Counter()  # by user
        self.api = UserApi(kube)
        self._pages = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
        )  # fmt: skip

    # ---- sessions ----

    def session(self, request: web.Request) -> Session | None:
        return self._sealer.open(request.cookies.get(COOKIE))

    def _page(self, template: str, code: int = 200, /, **values: Any) -> web.Response:
        every = {"namespace": None, "kind": None, "kinds": present.KINDS, "user": None}
        text = self._pages.get_template(template).render(**(every | values))
        return web.Response(text=text, status=code, content_type="text/html",
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    def _fragment(self, template: str, /, **values: Any) -> markupsafe.Markup:
        """A live part of a page: rendered (escaped) once, then placed as it is."""
        return markupsafe.Markup(self._pages.get_template(template).render(**values))

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return self._page("login.html", next=_safe_next(request.query.get("next", "/")),
                          error="")  # fmt: skip

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):  # no signing a browser in from another site
            return web.Response(status=403, text="cross-site request refused")
        form = await request.post()
        token, target = str(form.get("token", "")).strip(), _safe_next(str(form.get("next", "/")))
        error = "" if token else "Paste a Kubernetes token."
        who = None
        if token:
            try:
                who = await self._access.identify(token)
            except (KubeError, NotLoggedIn, OSError) as exc:
                log.warning("dashboard: the API server did not review a log-in: %s", exc)
                return self._page("login.html", 503, next=target,
                                  error="The API server did not answer; try again.")  # fmt: skip
            if who is None:
                error = "The API server does not accept this token (wrong or expired)."
        if who is None:
            return self._page("login.html", 401, next=target, error=error)
        log.info("dashboard: %s signed in", who.username)
        expires = time.time() + self._session_seconds
        response = web.HTTPSeeOther(target)
        response.set_cookie(COOKIE, self._sealer.seal(Session(token, who.username, expires)),
                            max_age=int(self._session_seconds), path="/", secure=True,
                            httponly=True, samesite="Strict")  # fmt: skip
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    # ---- pages ----

    async def namespaces(self, request: web.Request, session: Session) -> web.StreamResponse:
        names = await self.visible_namespaces(session)
        return self._page("namespaces.html", user=session.username, namespaces=names)

    async def visible_namespaces(self, session: Session) -> list[str]:
        """The namespaces the user may list Instances in: all they may list, if they may
        list namespaces; else those the API server says yes to, one review each."""
        try:
            found = await self.api.list(session.token, "namespaces", None, CORE)
            return sorted(n["metadata"]["name"] for n in found.get("items") or [])
        except ApiError as exc:
            if exc.status != 403:
                raise
        who = await self._access.identify(session.token)
        if who is None:
            return []
        everything = await self._kube.list_objects("namespaces", None, group="", version="v1")
        visible = []
        for name in sorted(n["metadata"]["name"] for n in everything):
            attributes = {"resourceAttributes": {"namespace": name, "verb": "list",
                          "group": "stratus.io", "resource": "instances"}}  # fmt: skip
            if await self._access.allowed(who, attributes):
                visible.append(name)
        return visible

    async def table(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace, kind = _where(request)
        source = Source(kind.plural, namespace)
        seen = await snapshot(self.api, session.token, [source])
        if seen[source].forbidden:
            return self.refused(session, namespace, ApiError(403, seen[source].forbidden))
        return self._page("table.html", user=session.username, namespace=namespace, kind=kind,
                          rows=self._rows(namespace, kind, seen[source]),
                          live=f"{request.path}/live")  # fmt: skip

    def _rows(self, namespace: str, kind: present.Kind, seen: Seen) -> str:
        now = datetime.datetime.now(datetime.UTC)
        rows = [present.row(kind.plural, o, now) for o in seen.items()]
        return self._fragment("rows.html", namespace=namespace, kind=kind, rows=rows,
                              forbidden=seen.forbidden)  # fmt: skip

    async def _stream(self, request: web.Request, session: Session, sources: list[Source],
                      render: Render) -> web.StreamResponse:  # fmt: skip
        """A live part, unless its user holds as many open as they may (429)."""
        if self._live[session.username] >= self._live_limit:
            return web.Response(status=429, text=f"{session.username} has "
                                f"{self._live_limit} live pages open; close one")  # fmt: skip
        self._live[session.username] += 1
        try:
            return await stream(request, self.api, session.token, sources, render)
        finally:
            self._live[session.username] -= 1
            if not self._live[session.username]:
                del self._live[session.username]

    async def table_live(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace, kind = _where(request)
        source = Source(kind.plural, namespace)

        def rows(seen: dict[Source, Seen]) -> str:
            return self._rows(namespace, kind, seen[source])

        return await self._stream(request, session, [source], rows)

    def _detail_sources(self, request: web.Request) -> tuple[Source, Source]:
        namespace, kind = _where(request)
        name = request.match_info["name"]
        return (Source(kind.plural, namespace, field_selector=f"metadata.name={name}"),
                Source("events", namespace, CORE, f"involvedObject.name={name},"
                       f"involvedObject.kind={kind.kind}"))  # fmt: skip

    def _detail(self, kind: present.Kind, seen: dict[Source, Seen], sources: tuple[Source, ...]
                ) -> str:  # fmt: skip
        found, events = seen[sources[0]].items(), seen[sources[1]]
        listed = sorted(events.items(), key=lambda e: e.get("lastTimestamp") or "", reverse=True)
        return self._fragment(
            "detail_status.html", kind=kind, detail=present.detail(kind.plural, found[0])
            if found else None, events=listed[:20], events_forbidden=events.forbidden,
        )  # fmt: skip

    async def detail(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace, kind = _where(request)
        name = request.match_info["name"]
        try:
            obj = await self.api.get(session.token, kind.plural, namespace, name)
        except ApiError as exc:
            return self.refused(session, namespace, exc)
        sources = self._detail_sources(request)
        seen = await snapshot(self.api, session.token, list(sources))
        return self._page("detail.html", user=session.username, namespace=namespace, kind=kind,
                          name=name, obj=obj, verbs=VERBS,
                          status=self._detail(kind, seen, sources),
                          live=f"{request.path}/live")  # fmt: skip

    async def detail_live(self, request: web.Request, session: Session) -> web.StreamResponse:
        _, kind = _where(request)
        sources = self._detail_sources(request)
        return await self._stream(request, session, list(sources),
                                  lambda seen: self._detail(kind, seen, sources))  # fmt: skip

    def _topology(self, seen: dict[Source, Seen], sources: list[Source]) -> str:
        networks, instances = (seen[s] for s in sources)
        layout = present.topology(networks.items(), instances.items())
        return self._fragment("topology_svg.html", layout=layout,
                              forbidden=networks.forbidden or instances.forbidden)  # fmt: skip

    async def topology(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        sources = [Source("networks", namespace), Source("instances", namespace)]
        seen = await snapshot(self.api, session.token, sources)
        return self._page("topology.html", user=session.username, namespace=namespace,
                          svg=self._topology(seen, sources),
                          live=f"{request.path}/live")  # fmt: skip

    async def topology_live(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        sources = [Source("networks", namespace), Source("instances", namespace)]
        return await self._stream(request, session, sources,
                                  lambda seen: self._topology(seen, sources))  # fmt: skip

    # ---- changes ----

    async def new(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace, kind = _where(request)
        return await self._form(session, namespace, kind, {}, "", 200)

    async def _form(self, session: Session, namespace: str, kind: present.Kind,
                    values: dict[str, str], error: str, status: int) -> web.Response:  # fmt: skip
        choices: dict[str, list[str]] = {}
        if kind.plural == "instances":  # what the user may pick from, where they may look
            wheres = {"images": namespace, "networks": namespace, "instancetypes": None}
            for plural, where in wheres.items():
                try:
                    found = await self.api.list(session.token, plural, where)
                    choices[plural] = sorted(o["metadata"]["name"] for o in found["items"])
                except ApiError:
                    choices[plural] = []
        return self._page(f"new_{kind.plural}.html", status, user=session.username,
                          namespace=namespace, kind=kind, values=values,
                          error=error, choices=choices,
                          options=present.options(choices.get("networks", [])))  # fmt: skip

    async def create(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace, kind = _where(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        body = present.manifest(kind.plural, form)
        try:
            await self.api.create(session.token, kind.plural, namespace, body)
        except ApiError as exc:
            if exc.status == 401:
                raise  # signed_in: sign in again
            return await self._form(session, namespace, kind, form, exc.message, exc.status)
        name = quote(body["metadata"]["name"], safe="")
        raise web.HTTPSeeOther(f"/ns/{quote(namespace)}/{kind.plural}/{name}")

    async def delete(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace, kind = _where(request)
        try:
            await self.api.delete(session.token, kind.plural, namespace,
                                  request.match_info["name"])  # fmt: skip
        except ApiError as exc:
            return self.refused(session, namespace, exc)
        raise web.HTTPSeeOther(f"/ns/{quote(namespace)}/{kind.plural}")

    async def act(self, request: web.Request, session: Session) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        verb = request.match_info["verb"]
        patch = {"spec": verb_patch(verb, datetime.datetime.now(datetime.UTC))}
        try:
            await self.api.patch(session.token, "instances", namespace, name, patch)
        except ApiError as exc:
            return self.refused(session, namespace, exc)
        raise web.HTTPSeeOther(f"/ns/{quote(namespace)}/instances/{quote(name, safe='')}")

    def refused(self, session: Session, namespace: str, exc: ApiError) -> web.Response:
        """The API server's refusal as a page; a token it no longer takes goes to
        signed_in, which asks the user to sign in again."""
        if exc.status == 401:
            raise exc
        return self._page("error.html", exc.status, user=session.username, namespace=namespace,
                          status=exc.status, message=exc.message)  # fmt: skip


def _where(request: web.Request) -> tuple[str, present.Kind]:
    plural = request.match_info.get("plural", "instances")
    if plural not in present.KINDS:
        raise web.HTTPNotFound(text=f"no kind {plural} here")
    return request.match_info["namespace"], present.KINDS[plural]


def _safe_next(target: str) -> str:
    """Only a path on this site: an absolute URL after log-in would be an open redirect."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def signed_in(dashboard: Dashboard, handler: Callable[[web.Request, Session],
              Awaitable[web.StreamResponse]]) -> Handler:  # fmt: skip
    """A handler for signed-in users: others go to the log-in page (or get 401), and a
    change must come from a page of this site (its Origin), on top of the SameSite cookie."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        session = dashboard.session(request)
        if request.method != "GET" and not same_origin(request):
            return web.Response(status=403, text="cross-site request refused")
        if session is None:
            if request.method != "GET" or request.path.endswith("/live"):
                return web.Response(status=401, text="sign in first")
            raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
        try:
            return await handler(request, session)
        except ApiError as exc:
            if exc.status != 401:
                return dashboard.refused(session, request.match_info.get("namespace", ""), exc)
            # The token expired or was revoked: sign in again.
            again = web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
            again.del_cookie(COOKIE, path="/")
            return again

    return guarded


def same_origin(request: web.Request) -> bool:
    """Whether a request that changes something, or opens a console with the session
    cookie, comes from this site's own pages: browsers send Origin with both."""
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc == request.host


def routes(dashboard: Dashboard, application: web.Application) -> None:
    d, add = dashboard, application.router
    ns, obj = "/ns/{namespace}", "/ns/{namespace}/{plural}/{name}"
    add.add_get("/login", d.login_page)
    add.add_post("/login", d.login)
    add.add_post("/logout", d.logout)
    add.add_get("/", signed_in(d, d.namespaces))
    add.add_get(ns, signed_in(d, lambda r, s: _to_instances(r)))
    add.add_get(f"{ns}/topology", signed_in(d, d.topology))
    add.add_get(f"{ns}/topology/live", signed_in(d, d.topology_live))
    add.add_get(f"{ns}/{{plural}}", signed_in(d, d.table))
    add.add_post(f"{ns}/{{plural}}", signed_in(d, d.create))
    add.add_get(f"{ns}/{{plural}}/live", signed_in(d, d.table_live))
    add.add_get(f"{ns}/{{plural}}/new", signed_in(d, d.new))
    add.add_get(obj, signed_in(d, d.detail))
    add.add_get(f"{obj}/live", signed_in(d, d.detail_live))
    add.add_post(f"{obj}/delete", signed_in(d, d.delete))
    verbs = "|".join(VERBS)
    add.add_post(f"{ns}/instances/{{name}}/{{verb:{verbs}}}", signed_in(d, d.act))
    add.add_static("/static/", HERE / "static")


async def _to_instances(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(f"{request.path.rstrip('/')}/instances")
