"""The one exception type that the CLI turns into a clear one-line message and exit code 2."""


class UserError(Exception):
    """A mistake in the user's input (bad file, bad prompt, bad flag value): not a bug in unigap."""
