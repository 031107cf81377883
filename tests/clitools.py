"""What the command-line tests share: running ``nfcli`` in-process, and checking a refusal."""

from typer.testing import CliRunner

from nfcli.cli import app

runner = CliRunner()


def run(*args):
    """``nfcli ARGS`` in-process; the result's output holds stdout and stderr."""
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(result, fragment: str) -> None:
    """Exit code 2, one message containing ``fragment`` (line wrapping ignored), no traceback."""
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
