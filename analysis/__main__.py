"""``python -m stabilitybench.analysis``: the ``analyze`` command on its own."""

import typer

from stabilitybench.analysis.cli import analyze
from stabilitybench.data_schema.errors import exit_on_user_error


def main() -> None:
    exit_on_user_error(lambda: typer.run(analyze))


if __name__ == "__main__":
    main()
