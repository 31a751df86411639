"""``python -m stabilitybench.generate``: the generate/status commands without the umbrella CLI."""

import typer

from stabilitybench.data_schema.errors import exit_on_user_error
from stabilitybench.generate.cli import generate, status

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command()(generate)
app.command()(status)

exit_on_user_error(app)
