"""Service commands: `dsgen api`, `dsgen worker`, `dsgen migrate`, `dsgen keys create`,
`dsgen serve --embedded`, and the client side `dsgen submit/jobs/pull` (a remote server,
key from DSGEN_API_KEY). Heavy modules are imported inside the commands."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from worker.cli import UserError, cli

SERVER_OPT = click.option("--server", envvar="DSGEN_SERVER", default="http://127.0.0.1:8000", show_default=True,
                          help="API base URL (env DSGEN_SERVER); the API key is read from DSGEN_API_KEY")


def _settings(**overrides):
    from pydantic import ValidationError

    from shared.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"configuration: DSGEN_{str(first['loc'][0]).upper()}: {first['msg']}") from None


# ----------------------------------------------------------------------------- processes
@cli.command("api")
@click.option("--host", default=None, help="bind address (env DSGEN_API_HOST)")
@click.option("--port", type=int, default=None, help="port (env DSGEN_API_PORT)")
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn worker processes")
def api_command(host: str | None, port: int | None, workers: int) -> None:
    """Serve the REST API (uvicorn; configuration from DSGEN_* variables)."""
    import uvicorn

    from shared.logs import logging_dict

    s = _settings()
    uvicorn.run("api.app:create_app", factory=True, host=host or s.api_host, port=port or s.api_port,
                workers=workers, proxy_headers=True, log_config=logging_dict(s.log_format))


@cli.command("worker")
@click.option("--queues", "-Q", default="gpu", show_default=True, help="comma-separated: gpu, cpu")
@click.option("--concurrency", "-c", type=int, default=1, show_default=True,
              help="prefork children (1 per GPU for the gpu queue)")
@click.option("--beat", is_flag=True, help="also run the periodic reconciler (exactly one process may)")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--hostname", "-n", default=None, help="Celery node name")
def worker_command(queues: str, concurrency: int, beat: bool, loglevel: str, hostname: str | None) -> None:
    """Run a Celery worker (prefork; the model loads in the child on its first shard)."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in names if q not in ("gpu", "cpu")]
    if bad or not names:
        raise UserError(f"--queues: use gpu and/or cpu (got {queues!r})")
    from celery.signals import setup_logging

    from shared.logs import configure_logging
    from worker.celery_app import create_celery_app

    settings = _settings()

    @setup_logging.connect(weak=False)
    def _structured_logs(loglevel=None, **_kw) -> None:  # noqa: ANN001 - celery signal; replaces celery's set-up
        configure_logging(settings.log_format, loglevel or "INFO")

    app = create_celery_app(settings)
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "--pool", "prefork",
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["-n", hostname]
    if beat:
        argv += ["-B", "-s", str(settings.beat_schedule)]
    app.worker_main(argv)


@cli.command("migrate")
@click.option("--database-url", default=None, help="override DSGEN_DATABASE_URL")
@click.option("--revision", default="head", show_default=True)
def migrate_command(database_url: str | None, revision: str) -> None:
    """Bring the database schema to REVISION (Alembic migrations)."""
    from shared.db.migrate import upgrade

    url = database_url or _settings().database_url
    try:
        upgrade(url, revision)
    except Exception as err:  # noqa: BLE001 - connection errors are the user's to fix
        raise UserError(f"migration failed: {str(err).splitlines()[0]}") from None
    click.echo(f"database at {revision}")


@cli.group("keys")
def keys_group() -> None:
    """API keys."""


@keys_group.command("create")
@click.option("--tenant", required=True, help="tenant name (created if new)")
@click.option("--database-url", default=None, help="override DSGEN_DATABASE_URL")
def keys_create(tenant: str, database_url: str | None) -> None:
    """Create an API key for TENANT; it is printed once."""
    from shared.db.session import UnitOfWork, make_engine, make_session_factory
    from shared.errors import ServiceUnavailable
    from shared.tenants import api_keys as auth

    engine = make_engine(database_url or _settings().database_url)
    try:
        with UnitOfWork(make_session_factory(engine)) as uow:
            t, key = auth.create_api_key(uow.session, tenant)
            tenant_id = t.id
    except ValueError as err:
        raise UserError(f"--tenant: {err}") from None
    except ServiceUnavailable as err:
        raise UserError(str(err)) from None
    finally:
        engine.dispose()
    click.echo(key)
    click.echo(f"tenant {tenant} ({tenant_id}); keep the key: it is not stored and cannot be shown again", err=True)


@cli.command("serve")
@click.option("--embedded", is_flag=True, required=True, help="API + in-process generation, SQLite, a local folder")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=Path("dsgen-data"), show_default=True,
              help="folder for the database and the objects")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def serve_command(embedded: bool, data_dir: Path, host: str, port: int) -> None:
    """One machine, no servers: the API with generation in this process (no key needed)."""
    import socket

    import uvicorn

    from shared.logs import default_format, logging_dict

    with socket.socket() as probe:  # a taken port is refused before anything is printed or made
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror or err}); "
                            "is another server running? choose another --port") from None
    log_format = default_format(os.environ.get("DSGEN_LOG_FORMAT"))
    app = build_embedded_app(data_dir, host=host, port=port, log_format=log_format)
    click.echo(f"dsgen embedded: http://{host}:{port}/  (dashboard; API docs at /docs; data in {data_dir.resolve()})\n"
               f"models: {', '.join(app.state.settings.models)}  (set DSGEN_MODELS to serve others)", err=True)
    uvicorn.run(app, host=host, port=port, log_config=logging_dict(app.state.settings.log_format))


def build_embedded_app(data_dir: Path, *, host: str = "127.0.0.1", port: int = 8000, engine_factory=None,
                       log_format: str | None = None):
    """The embedded app: same API and worker code, SQLite + local store + in-process dispatcher."""
    import secrets

    from api.app import create_app
    from shared.db.migrate import upgrade
    from worker.service.context import WorkerContext
    from worker.service.embedded import InProcessDispatcher

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret_file = data_dir / "signing-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
    settings = _settings(
        database_url=f"sqlite:///{data_dir / 'dsgen.db'}",
        storage="local",
        local_storage_dir=data_dir / "objects",
        source_cache_dir=data_dir / "sources",
        public_base_url=f"http://{host}:{port}",
        signing_secret=secret_file.read_text().strip(),
        embedded_tenant=os.environ.get("DSGEN_EMBEDDED_TENANT", "local"),
        log_format=log_format,
    )
    upgrade(settings.database_url)  # the same migrations as Postgres
    dispatcher = InProcessDispatcher()
    extra = {"engine_factory": engine_factory} if engine_factory else {}

    def start(res) -> None:
        dispatcher.start(WorkerContext(settings=settings, session_factory=res.session_factory, store=res.store,
                                       dispatcher=dispatcher, **extra))

    return create_app(settings, dispatcher=dispatcher, on_startup=start, on_shutdown=dispatcher.shutdown)


# --------------------------------------------------------------------------------- client
def _client(server: str):
    from shared.client import Client

    return Client(server, os.environ.get("DSGEN_API_KEY"))


def _api_call(fn, *args, **kwargs):
    from shared.client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as err:
        raise UserError(err.message if err.status == 0 else f"{err.message} (HTTP {err.status})") from None


def _check_pull_target(out: Path) -> None:
    """An export is unpacked into a new or empty folder only: never mixed with other files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a new or empty folder")
    for parent in out.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a folder")
            break
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; pull into a new or empty folder (files would be mixed)")


def _wait_with_bar(client, job: dict) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[state]}"), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(job["name"], total=job["progress"]["total"], state=job["status"])

        def update(j: dict) -> None:
            p = j["progress"]
            rate = f" {p['images_per_s']:.2f} img/s" if p.get("images_per_s") else ""
            bar.update(task, completed=p["done"], state=f"{j['status']}{rate}")

        return _api_call(client.wait, job["id"], on_progress=update)


@cli.command("submit")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@SERVER_OPT
@click.option("--wait", is_flag=True, help="show a progress bar until the job ends")
@click.option("--idempotency-key", default=None, help="submitting twice with the same key makes one job")
def submit_command(spec_path: Path, server: str, wait: bool, idempotency_key: str | None) -> None:
    """Submit a job SPEC to a dsgen server; prints the job id."""
    from shared.formats.spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        raise UserError(str(err)) from None
    with _client(server) as client:
        job = _api_call(client.submit, spec.model_dump(mode="json"), idempotency_key)
        click.echo(job["id"])
        if wait:
            job = _wait_with_bar(client, job)
            click.echo(f"{job['status']}: {job['progress']['done']}/{job['progress']['total']} samples", err=True)
            if job["status"] != "succeeded":
                raise UserError(f"job {job['status']}: {job.get('error') or ''}".strip())


@cli.group("jobs")
def jobs_group() -> None:
    """Jobs on a dsgen server (API key from DSGEN_API_KEY; ids may be unique prefixes)."""


@jobs_group.command("list")
@SERVER_OPT
@click.option("--status", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
def jobs_list(server: str, status: str | None, limit: int) -> None:
    """Your tenant's jobs, newest first: id, status, images, created, name (key: DSGEN_API_KEY)."""
    with _client(server) as client:
        page = _api_call(client.jobs, status=status, limit=limit)
    for j in page["items"]:
        click.echo(f"{j['id']}  {j['status']:<10}  {j['num_images']:>7}  {j['created_at']}  {j['name']}")


@jobs_group.command("show")
@click.argument("job_id")
@SERVER_OPT
def jobs_show(job_id: str, server: str) -> None:
    """A job as JSON: status, progress, shards, spec. JOB_ID may be a unique prefix."""
    with _client(server) as client:
        click.echo(json.dumps(_api_call(client.job, _api_call(client.resolve_job_id, job_id)), indent=2))


@jobs_group.command("cancel")
@click.argument("job_id")
@SERVER_OPT
def jobs_cancel(job_id: str, server: str) -> None:
    """Cancel a queued or running job (workers stop between batches). JOB_ID may be a unique prefix."""
    with _client(server) as client:
        click.echo(_api_call(client.cancel, _api_call(client.resolve_job_id, job_id))["status"])


@jobs_group.command("retry")
@click.argument("job_id")
@SERVER_OPT
def jobs_retry(job_id: str, server: str) -> None:
    """Send the failed shards of a failed job again. JOB_ID may be a unique prefix."""
    with _client(server) as client:
        result = _api_call(client.retry, _api_call(client.resolve_job_id, job_id))
    click.echo(f"{result['job']['status']}: shards sent again: {result['shards']}")


@cli.command("pull")
@click.argument("job_id")
@SERVER_OPT
@click.option("--format", "fmt", default="coco", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def pull_command(job_id: str, server: str, fmt: str, out: Path) -> None:
    """Download an export of a finished job and unpack it into OUT (a new or empty folder).
    JOB_ID may be a unique prefix."""
    _check_pull_target(out)
    with _client(server) as client:
        names = _api_call(client.pull, _api_call(client.resolve_job_id, job_id), fmt, out)
    click.echo(f"{len(names)} files in {out}", err=True)


@cli.group("datasets")
def datasets_group() -> None:
    """Named datasets on a dsgen server and their versions (v1, v2, ..., latest)."""


def _name_at_version(ref: str) -> tuple[str, str]:
    name, _, version = ref.partition("@")
    if not name:
        raise UserError(f"NAME[@VERSION]: a dataset name is needed (got {ref!r})")
    return name, version or "latest"


@datasets_group.command("list")
@SERVER_OPT
def datasets_list(server: str) -> None:
    """Datasets of your tenant, with their number of versions."""
    with _client(server) as client:
        page = _api_call(client.datasets)
    for d in page["items"]:
        latest = f"v{d['latest']}" if d["latest"] else "-"
        click.echo(f"{d['name']:<30}  {d['versions']:>4} version(s)  latest {latest:<6}  {d['created_at']}")


@datasets_group.command("show")
@click.argument("ref", metavar="NAME[@VERSION]")
@SERVER_OPT
@click.option("--diff", "base", default=None, metavar="VERSION", help="also compare with this older version")
def datasets_show(ref: str, server: str, base: str | None) -> None:
    """NAME: its versions; NAME@VERSION (latest, 3, v3): that version as JSON."""
    name, version = _name_at_version(ref)
    with _client(server) as client:
        if "@" not in ref and base is None:
            page = _api_call(client.versions, name)
            for v in page["items"]:
                click.echo(f"{v['name']:<6}  {v['job_id']}  {v['summary'].get('samples', '?'):>7} samples  {v['created_at']}")
            if not page["items"]:
                click.echo("no version yet", err=True)
            return
        out = _api_call(client.version, name, version)
        if base is not None:
            out = {"version": out, "diff": _api_call(client.diff, name, base, version)}
    click.echo(json.dumps(out, indent=2))


@datasets_group.command("pull")
@click.argument("ref", metavar="NAME[@VERSION]")
@SERVER_OPT
@click.option("--format", "fmt", default="coco", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def datasets_pull(ref: str, server: str, fmt: str, out: Path) -> None:
    """Download an export of a dataset version (default: latest) and unpack it into OUT."""
    name, version = _name_at_version(ref)
    _check_pull_target(out)
    with _client(server) as client:
        v, names = _api_call(client.pull_version, name, version, fmt, out)
    click.echo(f"{name} {v['name']} (job {v['job_id']}): {len(names)} files in {out}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
