"""The one exception type that means "the user gave us something wrong"; the CLI prints it as one line."""


class UserError(Exception):
    """A mistake in input, configuration or files: reported as `error: <message>` and exit code 2."""


class WrongModelError(UserError, AttributeError):
    """A method of the other kind of model (fill_mask on a fine-tuned classifier, predict on a
    pretrained checkpoint). An AttributeError too, so hasattr() and duck typing still say no."""

