class UserError(Exception):
    """A problem with what the user gave us (file, record, flag).

    The CLI prints the message on one line, without a traceback, and exits with code 2.
    The message should name the culprit and say what to do.
    """
