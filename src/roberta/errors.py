"""The one exception type that means "the user gave us something wrong"; the CLI prints it as one line."""


class UserError(Exception):
    """A mistake in input, configuration or files: reported as `error: <message>` and exit code 2."""

