import contextvars

# True while the `llm-tuning` command runs (cli.main sets it): advice in an error then names flags (--resume);
# from Python it names the keyword arguments (resume=True), which is what a Python caller types.
_ON_COMMAND_LINE = contextvars.ContextVar("llm_tuning_on_command_line", default=False)


class UserError(Exception):
    """A problem with what the user gave us (file, record, flag).

    The CLI prints the message on one line, without a traceback, and exits with code 2.
    The message should name the culprit and say what to do.
    """


def spell(name: str, value=True) -> str:
    """Option `name` set to `value` as the caller writes it: `--overwrite` / `--output-dir runs/x` on the command
    line, `overwrite=True` / `output_dir='runs/x'` from Python."""
    if _ON_COMMAND_LINE.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is True else f"{flag} {value}"
    return f"{name}={value!r}"


def on_command_line():
    """Context manager: error advice spelled as flags while the CLI runs."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        token = _ON_COMMAND_LINE.set(True)
        try:
            yield
        finally:
            _ON_COMMAND_LINE.reset(token)

    return scope()
