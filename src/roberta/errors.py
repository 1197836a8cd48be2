"""The one exception type that means "the user gave us something wrong"; the CLI prints it as one line."""


class UserError(Exception):
    """A mistake in input, configuration or files: reported as `error: <message>` and exit code 2."""


class LostRank(UserError):
    """A collective failed because another rank died or stopped answering. The CLI ends such a
    process at once after its error line: with a peer gone, torch's gloo threads can abort the
    interpreter's normal teardown ("terminate called without an active exception", exit -6)."""
