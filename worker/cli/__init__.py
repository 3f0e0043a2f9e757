"""The `dsgen` command line.

Each command group lives in its own module and imports heavy things (torch, diffusers,
fastapi) inside the command, so `dsgen --help` and the client commands stay fast and work
in images without torch.
"""
from __future__ import annotations

import sys

import click

from shared.formats.spec import SpecError


class UserError(click.ClickException):
    """A problem the user can fix: printed as one line, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D401 - click API
        click.echo(f"error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=None, package_name="dsgen", prog_name="dsgen", message="%(prog)s %(version)s")
def cli() -> None:
    """dsgen: generate labeled datasets with diffusion models.

    \b
    Local:   dsgen run SPEC --out DIR
    Service: dsgen submit SPEC, dsgen jobs list|show|cancel|retry, dsgen pull JOB --out DIR
    \b
    Environment: DSGEN_API_KEY (the API key the client commands send), DSGEN_SERVER (the
    server's URL), DSGEN_* settings of the service processes (see docs/service.md).
    """


def _register() -> None:
    from worker.cli import run as _run  # noqa: F401  (registers commands on import)

    for optional in ("shapes", "service", "adaptor", "segmenter", "concepts"):
        try:
            __import__(f"worker.cli.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"worker.cli.{optional}":
                raise


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        cli.main(args=argv, prog_name="dsgen", standalone_mode=True)
    except SpecError as err:  # raised outside a command's own handling
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
