"""The FastAPI application: the JSON API, the model cards, the web page and its files.

No model logic lives here: every answer comes from a :class:`topoclass.api.Predictor`
(``predict`` for formulas, ``predict_structures`` for files), run off the event loop by a
:mod:`~topoclass.serve.batching` runner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from topoclass import __version__
from topoclass.api import formula_inputs, structure_inputs
from topoclass.errors import TopoclassError
from topoclass.serve.answers import DEFAULT_ROWS, AnswerCache
from topoclass.serve.batching import MicroBatcher, PredictionRunner, ThreadPoolRunner
from topoclass.serve.body_limit import BodySizeLimit
from topoclass.serve.limits import LimitExceeded, Limits
from topoclass.serve.registry import ServedModel
from topoclass.serve.schemas import (
    MODEL_HELP,
    PREDICTOR_HELP,
    Choice,
    Health,
    MaterialRow,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    Problem,
)
from topoclass.serve.uploads import ReadUpload, Upload, read_uploads

STATIC = Path(__file__).with_name("static")
# Refusals are one line (not FastAPI's list of validation errors), and the schema says so.
REFUSALS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": "over a limit of the server"},
    422: {"model": Problem, "description": "invalid request (the field, row or file is named)"},
}


def create_app(
    models: dict[str, ServedModel],
    limits: Limits,
    *,
    batching: bool = True,
    cached_rows: int = DEFAULT_ROWS,
) -> FastAPI:
    """The application serving ``models`` (the first is the default) within ``limits``, keeping
    the last ``cached_rows`` formula answers."""
    runner: PredictionRunner = MicroBatcher(limits.max_rows) if batching else ThreadPoolRunner()
    answers = AnswerCache(cached_rows)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runner.close()

    # FastAPIOffline serves Swagger UI's files from its package: /docs loads nothing from outside.
    app = FastAPIOffline(
        title="topoclass",
        version=__version__,
        description="Predictions of topological materials classes. The web page is at /.",
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, limits=limits)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(RequestValidationError, _one_line_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(TopoclassError, _user_error)  # type: ignore[arg-type]
    app.add_exception_handler(LimitExceeded, _over_limit)  # type: ignore[arg-type]

    def served(name: str | None) -> ServedModel:
        if name is None:
            return next(iter(models.values()))
        if name not in models:
            raise HTTPException(422, f"model: '{name}' is not served here ({', '.join(models)})")
        return models[name]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> Health:
        """The server is up, with these models loaded."""
        return Health(models=list(models))

    @app.get("/models")
    async def list_models() -> list[ModelInfo]:
        """The served models, the first being the default."""
        return [_info(model) for model in models.values()]

    @app.get(
        "/models/{name}/card",
        response_model=None,
        responses={
            200: {"content": {"text/markdown": {}, "text/html": {}}},
            404: {"model": Problem, "description": "no such model, or no card"},
            422: REFUSALS[422],
        },
    )
    async def card(
        name: str, request: Request, format: Annotated[str | None, Query(pattern="^(markdown|html)$")] = None
    ) -> PlainTextResponse | HTMLResponse:
        """The model card: Markdown, or an HTML page with ``?format=html`` (or ``Accept: text/html``)."""
        if name not in models:
            raise HTTPException(404, f"model '{name}' is not served here ({', '.join(models)})")
        path = models[name].card
        if path is None:
            raise HTTPException(404, f"model '{name}' has no model card")
        text = path.read_text(encoding="utf-8")
        wants_html = format == "html" or (format is None and "text/html" in request.headers.get("accept", ""))
        if wants_html:
            return HTMLResponse(_card_page(name, text))
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")

    @app.post("/predict", responses=REFUSALS)
    async def predict(request: PredictRequest) -> PredictResponse:
        """Predictions from formulas and space groups."""
        limits.check_rows(len(request.rows), "rows")
        model = served(request.model)
        choice = request.predictor

        def call(rows: list[Any]) -> list[dict[str, Any]]:
            formulas = [row.formula for row in rows]
            ids = [row.id or row.formula for row in rows]
            groups = [row.spacegroup for row in rows]
            inputs = formula_inputs(formulas, groups, ids=ids)
            return model.predictor.answer(inputs, predictor=choice).records()

        async def predicted(rows: list[MaterialRow]) -> list[dict[str, Any]]:
            return await runner.run((model.name, "formulas", choice), call, rows)

        rows = await answers.answer((model.name, choice), request.rows, predicted)
        # Every row with every column: a call in which no row could be predicted has no task columns.
        columns = model.formula_columns
        rows = [{column: row.get(column) for column in columns} for row in rows]
        return PredictResponse(model=model.name, tasks=model.predictor.tasks, rows=rows)

    @app.post("/predict/structures", responses=REFUSALS)
    async def predict_structures(
        files: Annotated[list[UploadFile], File(description="CIF, POSCAR, extxyz or pymatgen-JSON files")],
        model: Annotated[str | None, Form(description=MODEL_HELP)] = None,
        predictor: Annotated[Choice | None, Form(description=PREDICTOR_HELP)] = None,
    ) -> PredictResponse:
        """Predictions from crystal structure files; a file that cannot be read gets its reason in
        ``skipped`` and the others are answered."""
        limits.check_rows(len(files), "files")
        chosen = served(model)
        uploads = [Upload(file.filename or f"file {i}", await file.read()) for i, file in enumerate(files)]
        read = await run_in_threadpool(read_uploads, uploads, limits)
        readable = [upload for upload in read if upload.structure is not None]

        def call(items: list[Any]) -> list[dict[str, Any]]:
            inputs = structure_inputs([item.structure for item in items], ids=[item.name for item in items])
            return chosen.predictor.answer(inputs, predictor=predictor).records()

        predicted = (
            await runner.run((chosen.name, "structures", predictor), call, readable) if readable else []
        )
        return PredictResponse(
            model=chosen.name, tasks=chosen.predictor.tasks, rows=_in_order(read, predicted)
        )

    return app


def _info(model: ServedModel) -> ModelInfo:
    predictor = model.predictor
    return ModelInfo(
        name=model.name,
        tasks=predictor.tasks,
        classes=predictor.classes,
        uses_structures=predictor.uses_structures,
        card=f"/models/{model.name}/card" if model.card is not None else None,
    )


def _in_order(read: list[ReadUpload], predicted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The predicted rows, with the unreadable files' rows put back where they were uploaded."""
    answers = iter(predicted)
    return [
        next(answers) if upload.structure is not None else {"id": upload.name, "skipped": upload.reason}
        for upload in read
    ]


def _card_page(name: str, markdown_text: str) -> str:
    import html

    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(name)}: model card</title>"
        '<link rel="stylesheet" href="/static/page.css"></head>'
        f'<body><main class="card-page">{body}</main></body></html>'
    )


def _location(loc: tuple[Any, ...]) -> str:
    """('body', 'rows', 3, 'spacegroup') -> 'rows[3].spacegroup'."""
    text = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "body"


async def _one_line_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return JSONResponse(
        {"detail": f"{_location(tuple(first['loc']))}: {first['msg']}{more}"}, status_code=422
    )


async def _user_error(_: Request, exc: TopoclassError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _over_limit(_: Request, exc: LimitExceeded) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)
