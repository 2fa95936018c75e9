"""The names of the stream machine: its states, inputs, commands and timers.

Strategy: each name is a ``str`` that prints bare (``IDLE``, not ``'IDLE'``), so that a table of
transitions, a command list in a test failure or a log line reads like the RFC-checked picture
in :mod:`proxyd.stream`. They live apart from the machine so that its rule modules
(:mod:`proxyd.tunnel`) and the relay can share them without importing each other.
"""

class _Name(str):
    """A state, input or command name: a str that prints bare."""

    __slots__ = ()

    def __repr__(self):
        return str(self)


def _names(text):
    return [_Name(word) for word in text.split()]


# States.
IDLE, ROUTING, AWAITING, RESPONDING, BLOCKED, FLUSHING, DONE, TUNNEL, TUNNEL_BLOCKED = _names(
    "IDLE ROUTING AWAITING RESPONDING BLOCKED FLUSHING DONE TUNNEL TUNNEL_BLOCKED")
STATES = (IDLE, ROUTING, AWAITING, RESPONDING, BLOCKED, FLUSHING, DONE, TUNNEL, TUNNEL_BLOCKED)

# Inputs.
(START, READY, UNREACHABLE, BUSY, LOST, WRITTEN, REQ_DATA, REQ_END, CLIENT_RESET, WINDOW, INFO,
 HEAD, DATA, TRAILERS, END, INVALID, READ_TIMEOUT, STALL_TIMEOUT, FAIL, UPGRADED,
 IDLE_TIMEOUT) = _names(
    "START READY UNREACHABLE BUSY LOST WRITTEN REQ_DATA REQ_END CLIENT_RESET WINDOW INFO HEAD DATA "
    "TRAILERS END INVALID READ_TIMEOUT STALL_TIMEOUT FAIL UPGRADED IDLE_TIMEOUT")
INPUTS = (START, READY, UNREACHABLE, BUSY, LOST, WRITTEN, REQ_DATA, REQ_END, CLIENT_RESET, WINDOW,
          INFO, HEAD, DATA, TRAILERS, END, INVALID, READ_TIMEOUT, STALL_TIMEOUT, FAIL, UPGRADED,
          IDLE_TIMEOUT)

# Commands.
(ACQUIRE, CANCEL_WAIT, SEND_HEAD, SEND_BODY, END_BODY, ACK, PAUSE_CLIENT, RESUME_CLIENT,
 PAUSE_BACKEND, RESUME_BACKEND, INFORM, RESPOND, SEND, END_RESPONSE, RESET, RELEASE_BACKEND,
 DISCARD_BACKEND, ARM, CANCEL, LOG, FINISH, OPEN_TUNNEL, CLOSE_BACKEND) = _names(
    "ACQUIRE CANCEL_WAIT SEND_HEAD SEND_BODY END_BODY ACK PAUSE_CLIENT RESUME_CLIENT PAUSE_BACKEND "
    "RESUME_BACKEND INFORM RESPOND SEND END_RESPONSE RESET RELEASE_BACKEND DISCARD_BACKEND ARM "
    "CANCEL LOG FINISH OPEN_TUNNEL CLOSE_BACKEND")

# Timers.
READ, STALL, IDLE_TIMER = _names("READ STALL IDLE")
