"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class LoraftError(Exception):
    """A problem with the user's input (recipe, data, paths, run directory), not a bug.

    The message is a single line that names the file, field or row and what was expected.
    """
