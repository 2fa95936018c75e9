"""proxyd's own log lines for systemd's journal: ``twistd --logger=proxyd.net.journal.observer``.

Strategy: under systemd, standard error goes to the journal, which timestamps every line itself
and reads a ``<N>`` prefix as the line's syslog priority (``SyslogLevelPrefix=yes``, the
default), so ``journalctl -u proxyd -p warning`` shows warnings and errors only. This observer
writes each event to the process's original standard error (twistd redirects ``sys.stderr``
into the log system, so writing there would loop) as ``<N>namespace: message``, one prefixed
line per line of a multi-line message (tracebacks stay whole, each line at the event's level).
Access lines with ``access_log: "-"`` go to standard output, unprefixed (priority info).
"""

import sys

from twisted.logger import FileLogObserver, LogLevel, formatEvent

PRIORITY = {LogLevel.critical: 2, LogLevel.error: 3, LogLevel.warn: 4, LogLevel.info: 6,
            LogLevel.debug: 7}


def format_for_journal(event):
    """``<N>namespace: message`` lines (with a trailing newline) for one log event."""
    priority = PRIORITY.get(event.get("log_level"), 6)
    if event.get("isError") or event.get("log_failure") is not None:
        priority = min(priority, 3)  # an error at least
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}".strip()
    if not text:
        return None
    prefix = f"<{priority}>{event.get('log_namespace', '-')}: "
    return "".join(prefix + line + "\n" for line in text.splitlines())


def observer():
    """The log observer factory twistd's ``--logger`` option names."""
    return FileLogObserver(sys.__stderr__, format_for_journal)
