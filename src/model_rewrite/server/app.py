"""The web app: `create_app(session)` builds the FastAPI JSON API and static page; `serve()` runs it with uvicorn."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..config import KeyConfig, RenderConfig, StatsConfig, UpdateConfig, config_from_dict, config_to_dict, field_bounds
from ..edits import EDIT_FORMAT, EDIT_VERSION, EditSpec, Selection, selection_from_dict
from ..errors import IncompatibleEdit, InvalidEdit, RewriteError
from ..latents import parse_seeds
from ..masks import check_mask_budget
from ..render import data_url, png_bytes
from ..rewrite import Rewriter
from ..stack import StackEntry, member_names
from . import schemas as S
from .context import REFERENCE_SEEDS
from .errors import DuplicateEdit, NameTaken, NotFound, SessionBusy, StorageError
from .guards import BodyLimit, SameOriginJSON, TrustedHostMiddleware, allowed_hosts
from .jobs import Job
from .session import EditSession
from .storage import NAME_RE

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024 * 1024
SPAN_CUTOFF = 0.1  # a context "spans" the directions whose singular value is at least this share of the largest


def _status_of(exc: RewriteError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (SessionBusy, NameTaken, IncompatibleEdit, DuplicateEdit)):
        return 409
    if isinstance(exc, StorageError):
        return 500
    return 400


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


# --- conversions between the API's JSON and the core types ---------------------------------------

def _selection(session: EditSession, sel: S.SelectionIn, what: str) -> Selection:
    return selection_from_dict(sel.model_dump(), what, max_side=session.resolution)


def _mask_urls(data: Any) -> list[Any]:
    """The mask data URLs of an edit's JSON form (paste, copy, context; of an edit-stack or multi-edit file,
    every edit's), found without decoding them."""
    if not isinstance(data, dict):
        return []
    sels = [data.get("paste"), data.get("copy"), *(data.get("context") or [] if isinstance(data.get("context"), list) else [])]
    nested = [u for key in ("edits", "members") if isinstance(data.get(key), list) for e in data[key] for u in _mask_urls(e)]
    return [s["mask"] for s in sels if isinstance(s, dict) and "mask" in s] + nested


def _check_masks(session: EditSession, urls: list[Any]) -> None:
    """Refuse, before any is decoded, masks larger than the model's image or more mask pixels in all than one
    request may cost (masks.check_mask_budget)."""
    check_mask_budget(urls, session.resolution)


def _direction_configs(body: S.ContextIn) -> tuple[KeyConfig, StatsConfig]:
    return config_from_dict(KeyConfig, body.keys.model_dump()), config_from_dict(StatsConfig, body.stats.model_dump())


def _spec_from_input(session: EditSession, edit: S.EditIn) -> EditSpec:
    """The EditSpec the page describes, parsed by the same code that reads edit files."""
    data = edit.model_dump(by_alias=True)
    data.update(format=EDIT_FORMAT, version=EDIT_VERSION, model=session.rw.info.model_id,
                fingerprint=session.rw.info.fingerprint, latents=session.rw.latent_scheme)
    _check_masks(session, _mask_urls(data))
    spec = session.check_edit(EditSpec.from_dict(data, max_side=session.resolution))
    if spec.copy is None and not spec.update.erase:  # files may omit copy (erase); the page must say so
        raise InvalidEdit("paint a copy region, or turn on erase mode to remove what the context shows")
    return spec


def _entry_out(entry: StackEntry) -> S.EntryOut:
    spec = entry.spec if entry.spec is not None else entry.members[0].spec if entry.members else None
    return S.EntryOut(id=entry.id, name=entry.name, layer=spec.layer if spec is not None else "",
                      rank=entry.delta.rank, param_path=entry.delta.param_path,
                      edit=entry.spec.to_dict() if entry.spec is not None else None,
                      members=member_names(entry.members),
                      member_edits=[m.spec.to_dict() for m in entry.members])


def _job_out(job: Job, since: int = 0) -> S.JobOut:
    since = max(0, min(since, len(job.losses)))
    return S.JobOut(id=job.id, kind=job.kind, name=job.name, state=job.state, phase=job.phase, step=job.step,
                    steps=job.steps, losses=job.losses[since:], since=since, error=job.error, note=job.note,
                    entry_id=job.entry_id, seconds=round(job.seconds, 3), report=job.report, reports=job.reports,
                    suggestions=job.suggestions)


def _image_url(state: str, seed: int) -> str:
    return f"/api/images/{state}/{seed}.png"


def create_app(session: EditSession, host: str | None = None, hosts: Sequence[str] | None = None) -> FastAPI:
    """The FastAPI app serving one EditSession: JSON endpoints under /api, the page at /.

    It answers only requests whose Host is one of `hosts` (default: `guards.allowed_hosts(host)`, the
    loopback names and the address the server was started for), and accepts a change (POST, DELETE) only
    from its own origin, as JSON (guards.py)."""
    app = FastAPI(title="model-rewrite", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")  # the docs pages would load scripts from a CDN
    app.state.session = session

    @app.exception_handler(RewriteError)
    async def rewrite_error(_request: Request, exc: RewriteError) -> JSONResponse:
        body = {"detail": str(exc)}
        if getattr(exc, "code", None):  # what kind of 409 it is: "busy" (a job runs) or "duplicate"
            body["code"] = exc.code  # type: ignore[attr-defined]
        return JSONResponse(body, status_code=_status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=400)

    # --- page -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # --- model ------------------------------------------------------------------------
    @app.get("/api/info", response_model=S.InfoOut)
    def info() -> S.InfoOut:
        rw = session.rw
        return S.InfoOut(
            model=rw.info.model_id, fingerprint=rw.info.fingerprint, kind=rw.info.kind, resolution=rw.info.resolution,
            layers=[S.LayerOut(name=l.name, kind=l.kind, key_size=l.key_size, value_shape=list(l.value_shape),
                               key_resolution=l.key_resolution, resolution=l.resolution) for l in session.layers],
            default_layer=session.default_layer, keys=config_to_dict(KeyConfig()), update=config_to_dict(UpdateConfig()),
            stats=config_to_dict(StatsConfig()), fire_quantile=RenderConfig().fire_quantile, max_page=S.MAX_PAGE,
            edits_dir=str(session.edits_dir), session=session.nonce,
            bounds={name: field_bounds(cls) for name, cls in (("keys", KeyConfig), ("update", UpdateConfig), ("stats", StatsConfig))},
            max_gallery=S.MAX_GALLERY, max_search=S.MAX_SEARCH, max_seed=S.MAX_SEED, name_pattern=NAME_RE.pattern,
            match_reference=list(REFERENCE_SEEDS),
        )

    # --- images -----------------------------------------------------------------------
    @app.get("/api/gallery", response_model=S.GalleryOut)
    def gallery(seeds: str = Query("0-15", max_length=2000), page: int = Query(0, ge=0),
                per_page: int = Query(16, ge=1, le=S.MAX_PAGE),
                which: str = Query("edited", pattern="^(edited|original|both)$")) -> S.GalleryOut:
        """One page of a seed range or list; its images are rendered (batched) before the answer."""
        all_seeds = parse_seeds(seeds, limit=S.MAX_GALLERY)
        pages = max(1, -(-len(all_seeds) // per_page))
        page = min(page, pages - 1)
        shown = all_seeds[page * per_page : (page + 1) * per_page]
        state = session.prerender(shown, which)
        return S.GalleryOut(state=state, seeds=shown, total=len(all_seeds), page=page, pages=pages,
                            images=[S.GalleryImage(seed=s, edited=_image_url(state, s), original=_image_url(session.base_state, s))
                                    for s in shown])

    @app.get("/api/images/{state}/{seed}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def image(state: str, seed: int) -> Response:
        """The PNG of image `seed` under weights `state` (URLs from /api/gallery; immutable)."""
        if seed < 0 or seed > S.MAX_SEED:
            raise NotFound(f"seed {seed} is out of range")
        png = session.image_png(state, seed)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400, immutable"})

    @app.post("/api/preview", response_model=S.PreviewOut)
    def preview(body: S.PreviewIn) -> S.PreviewOut:
        """What the copy region takes, and the composite at the paste location with its box."""
        _check_masks(session, [body.copy_.mask] + ([body.paste.mask] if body.paste else []))
        out = session.preview(_selection(session, body.copy_, "copy"),
                              _selection(session, body.paste, "paste") if body.paste else None, body.layer)
        return S.PreviewOut(**out)

    @app.post("/api/search", response_model=S.SearchOut)
    def search(body: S.SearchIn) -> S.SearchOut:
        """Rank candidate seeds by how strongly the context direction fires on them."""
        candidates = parse_seeds(body.seeds, limit=S.MAX_SEARCH)
        _check_masks(session, [s.mask for s in body.context])
        context = [_selection(session, s, f"context[{i}]") for i, s in enumerate(body.context)]
        state, threshold, best, warning = session.search(body.layer, context, *_direction_configs(body), candidates,
                                                         body.top_k, body.quantile)
        return S.SearchOut(matches=[S.Match(seed=s, score=v, url=_image_url(state, s), overlay=data_url(png), mask=data_url(mask),
                                            fraction=f) for s, v, png, mask, f in best],
                           searched=len(candidates), threshold=threshold, quantile=body.quantile, warning=warning)

    @app.post("/api/spectrum", response_model=S.SpectrumOut)
    def spectrum(body: S.ContextIn) -> S.SpectrumOut:
        """How many directions the context spans: the singular values of its whitened keys (largest first, relative
        to the largest), as the paper's UI printed them next to the rank."""
        _check_masks(session, [s.mask for s in body.context])
        context = [_selection(session, s, f"context[{i}]") for i, s in enumerate(body.context)]
        keys, stats = _direction_configs(body)
        values, count, spans = session.spectrum(body.layer, context, keys, stats, SPAN_CUTOFF)
        return S.SpectrumOut(values=values, keys=count, rank=keys.rank, directions=spans)

    @app.post("/api/live", response_model=S.LiveOut)
    def live(body: S.LiveIn) -> S.LiveOut:
        """The draft's effect on `seeds` without executing it: solved in closed form (no optimisation), applied
        only while the images render; nothing is pushed. 409 while a job runs."""
        spec = _spec_from_input(session, body.edit)
        images, seconds, note = session.live_preview(spec, body.seeds)
        return S.LiveOut(images=[S.LiveImage(seed=s, image=data_url(png_bytes(im))) for s, im in zip(body.seeds, images)],
                         seconds=round(seconds, 4), layer=spec.layer, note=note)

    @app.post("/api/matches", response_model=S.MatchesOut)
    def matches(body: S.MatchesIn) -> S.MatchesOut:
        """Overlays of where the context fires on each image (above the quantile of the heat)."""
        _check_masks(session, [s.mask for s in body.context])
        context = [_selection(session, s, f"context[{i}]") for i, s in enumerate(body.context)]
        threshold, items = session.matches(body.layer, context, *_direction_configs(body), body.seeds, body.quantile, body.which)
        return S.MatchesOut(threshold=threshold, quantile=body.quantile,
                            overlays=[S.Overlay(seed=s, image=data_url(png), fraction=f) for s, png, f in items])

    # --- executing edits ----------------------------------------------------------------
    @app.post("/api/execute", response_model=S.JobOut, status_code=202)
    def execute(body: S.EditIn, again: bool = False) -> S.JobOut:
        """Start solving the edit; poll /api/job for progress. 409 while another edit runs (code "busy"), or when
        the same edit is applied already (code "duplicate"; `again=true` applies it a second time)."""
        return _job_out(session.start_job(_spec_from_input(session, body), again=again))

    @app.post("/api/suggest", response_model=S.JobOut, status_code=202)
    def suggest(body: S.EditIn) -> S.JobOut:
        """Start trying the edit at every layer and ranks 1, 2, 4 (closed form, scored by the quality report on
        held-out images); poll /api/job for the table. The model is left as it was."""
        return _job_out(session.start_suggest(_spec_from_input(session, body)))

    @app.get("/api/job", response_model=S.JobStatus)
    def job(since: int = Query(0, ge=0)) -> S.JobStatus:
        """The latest job (running or finished), with its losses from index `since`."""
        return S.JobStatus(job=_job_out(session.job, since) if session.job is not None else None)

    @app.post("/api/job/cancel", response_model=S.JobStatus)
    def cancel() -> S.JobStatus:
        job = session.cancel()
        if job is None:
            raise NotFound("no edit is running")
        return S.JobStatus(job=_job_out(job))

    # --- history ------------------------------------------------------------------------
    def history_out() -> S.HistoryOut:
        state, entries, undone = session.history()
        return S.HistoryOut(state=state, entries=[_entry_out(e) for e in entries], undone=[_entry_out(e) for e in undone])

    @app.get("/api/history", response_model=S.HistoryOut)
    def history() -> S.HistoryOut:
        return history_out()

    @app.post("/api/history/undo", response_model=S.HistoryOut)
    def undo() -> S.HistoryOut:
        session.undo()
        return history_out()

    @app.post("/api/history/redo", response_model=S.HistoryOut)
    def redo() -> S.HistoryOut:
        session.redo()
        return history_out()

    @app.post("/api/history/revert", response_model=S.HistoryOut)
    def revert() -> S.HistoryOut:
        session.revert_all()
        return history_out()

    @app.post("/api/history/joint", response_model=S.JobOut, status_code=202)
    def solve_together(body: S.JointIn) -> S.JobOut:
        """Start solving every applied edit at `layer` again, together (one joint edit in the place of the last
        of them); poll /api/job for each rule's report. 400 for fewer than two, or settings a joint solve cannot
        share; 409 while another job runs."""
        return _job_out(session.start_joint(body.layer))

    @app.post("/api/history/{entry_id}/take-out", response_model=S.TakeOutOut, status_code=202)
    def take_out(entry_id: int, body: S.TakeOutIn) -> S.TakeOutOut:
        """Take one rule out of an edit solved together: the others are solved again together (a job, in its
        place); its only rule: the edit is removed at once (`job` null). 404 for no such edit, 400 for one not
        solved together or no such rule, 409 while another job runs."""
        job = session.start_take_out(entry_id, body.member)
        return S.TakeOutOut(job=_job_out(job) if job is not None else None, history=history_out())

    @app.delete("/api/history/{entry_id}", response_model=S.HistoryOut)
    def remove(entry_id: int) -> S.HistoryOut:
        session.remove(entry_id)
        return history_out()

    # --- saved edits and export ---------------------------------------------------------
    @app.get("/api/edits", response_model=S.SavedEditsOut)
    def saved_edits() -> S.SavedEditsOut:
        return S.SavedEditsOut(edits_dir=str(session.edits_dir), edits=[S.SavedEditOut(**d) for d in session.saved_edits()])

    @app.post("/api/edits", response_model=S.SavedEditOut, status_code=201)
    def save(body: S.SaveIn) -> S.SavedEditOut:
        """Save the whole active stack (`stack`, an edit-stack file), the last applied edit (or `entry_id`), or a
        draft `edit`; 409 if the name exists and `overwrite` is false."""
        spec = _spec_from_input(session, body.edit) if body.edit is not None else None
        path = session.save(body.name, overwrite=body.overwrite, entry_id=body.entry_id, spec=spec, stack=body.stack)
        return _saved(path.stem)

    def _saved(name: str) -> S.SavedEditOut:
        for d in session.saved_edits():
            if d["name"] == name:
                return S.SavedEditOut(**d)
        raise NotFound(f"no saved edit named {name!r}")

    @app.post("/api/edits/import", response_model=S.SavedEditOut, status_code=201)
    def import_edit(body: S.ImportIn) -> S.SavedEditOut:
        """Store an edit file's JSON read by the browser (it is solved when loaded)."""
        _check_masks(session, _mask_urls(body.edit))
        path = session.import_edit(body.name, body.edit, overwrite=body.overwrite)
        return _saved(path.stem)

    @app.get("/api/edits/{name}", response_model=S.SavedEditDetail)
    def read_edit(name: str) -> S.SavedEditDetail:
        """A saved edit (of a stack: its last edit, with `count` and every edit in `edits`)."""
        edits = session.read_edit(name)
        return S.SavedEditDetail(name=session.edit_path(name).stem, has_factors=all(d is not None for _, d in edits),
                                 edit=edits[-1][0].to_dict(), count=len(edits), edits=[s.to_dict() for s, _ in edits])

    @app.get("/api/edits/{name}/file", response_class=FileResponse)
    def download_edit(name: str) -> FileResponse:
        """The edit's JSON file as a download (replay it with `model-rewrite apply`)."""
        session.read_edit(name)
        path = session.edit_path(name)
        return FileResponse(path, media_type="application/json", filename=path.name)

    @app.post("/api/edits/{name}/load", response_model=S.LoadOut)
    def load(name: str, body: S.LoadIn | None = None) -> S.LoadOut:
        """Read a saved edit for the page and (by default) apply it: at once with its factors, else
        as a job."""
        body = body if body is not None else S.LoadIn()
        specs, entries, job, note = session.load(name, apply=body.apply, again=body.again)
        return S.LoadOut(name=session.edit_path(name).stem, edit=specs[-1].to_dict(),
                         entry=_entry_out(entries[-1]) if entries else None, job=_job_out(job) if job is not None else None,
                         count=len(specs), entries=[_entry_out(e) for e in entries], note=note)

    @app.get("/api/export", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
    def export() -> Response:
        """The edited generator as a safetensors download (reload it with --model PATH)."""
        data = session.export_bytes()
        name = f"{session.rw.info.model_id.replace('/', '_')[-40:]}-edited.safetensors"
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(SameOriginJSON)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts) if hosts is not None else allowed_hosts(host))
    return app  # the middleware added last runs first: Host, then origin and content type, then the body's size


def _display_host(host: str) -> str:
    if host in ("", "0.0.0.0", "127.0.0.1", "localhost"):
        return "127.0.0.1"
    if host in ("::", "::1"):
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve(model: str, layer: str | None, host: str = "127.0.0.1", port: int = 0, cache_dir: str | None = None,
          device: str = "cpu", *, edits_dir: str | Path | None = None, latents: str = "seeds") -> None:
    """Load `model`, bind `host:port` (0 picks a free port), print the page's URL and serve until stopped.

    Saved edits go to `edits_dir` (default ./edits); `latents` is how image numbers become latents
    ("seeds" or "paper", the original authors' numbering).
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise RewriteError(f"port {port!r} is out of range: give 1 to 65535, or 0 for a free one")
    session = EditSession(Rewriter(model, device=device, cache_dir=cache_dir, latents=latents), layer=layer,
                          edits_dir=edits_dir if edits_dir is not None else Path.cwd() / "edits")
    app = create_app(session, host=host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "127.0.0.1", port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    print(f"http://{_display_host(host)}:{bound}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
