"""``python -m stabilitybench.reports``: the ``report`` command on its own."""

import typer

from stabilitybench.data_schema.errors import exit_on_user_error
from stabilitybench.reports.cli import report


def main() -> None:
    exit_on_user_error(lambda: typer.run(report))


if __name__ == "__main__":
    main()
