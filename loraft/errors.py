"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class LoraftError(Exception):
    """A problem with the user's input (recipe, data, paths, run directory), not a bug.

    The message is a single line that names the file, field or row and what was expected.
    """


def unwritable(error: BaseException) -> str | None:
    """What the machine refused, in one phrase, for a write that failed on a full, read-only or
    size-limited disk (torch's own writer only says "unexpected pos"); None for anything else."""
    import errno

    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "a file is over the size limit (ulimit -f)",
        errno.EROFS: "the file system is read-only",
    }
    if isinstance(error, OSError) and error.errno in reasons:
        return reasons[error.errno] + (f" writing {error.filename}" if error.filename else "")
    text = str(error)
    for number, reason in reasons.items():  # safetensors' Rust writer: "... (os error 28)"
        if f"(os error {number})" in text:
            return reason
    if isinstance(error, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter failed" in text):
        return "a file could not be written to the end (is the disk full?)"
    return None
