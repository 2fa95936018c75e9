"""The names of the stream machine: its states, inputs, commands and timers.

Strategy: each name is a ``str`` that prints bare (``IDLE``, not ``'IDLE'``), so that a table of
transitions, a command list in a test failure or a log line reads like the RFC-checked picture
in :mod:`proxyd.stream`. They live apart from the machine so that its rule modules
(:mod:`proxyd.tunnel`) and the relay can share them without importing each other.

Commands (tuples; the relay interprets them in order):

=====================================  ===========================================================
``(ACQUIRE, fresh)``                   ask the pool for a connection (a new one when ``fresh``)
``(CANCEL_WAIT,)``                     leave the pool's queue
``(SEND_HEAD,)``                       write the request head on the attached connection
``(SEND_BODY, data)``                  forward request body bytes
``(END_BODY, trailers)``               end the request body (with trailers when not empty)
``(ACK, n)``                           reopen the client's window for ``n`` consumed bytes
``(PAUSE_CLIENT,)`` / ``(RESUME_CLIENT,)``  stop / restart reading a client without flow control
``(PAUSE_BACKEND,)`` / ``(RESUME_BACKEND,)`` stop / restart reading the response
``(INFORM, status, headers)``          send a 1xx head to the client
``(RESPOND, status, headers, end)``    send the response head to the client
``(SEND, data)``                       send response body bytes (within the client's window)
``(END_RESPONSE, trailers)``           end the response (with trailers when not empty)
``(RESET, code)``                      reset the client's stream (HTTP/1.1: close the connection)
``(RELEASE_BACKEND,)``                 the exchange is over: the connection may be reused
``(DISCARD_BACKEND,)``                 drop the connection (or HTTP/2 stream) in its current state
``(ARM, timer)`` / ``(CANCEL, timer)``  start (or restart) / stop the ``READ``, ``STALL`` or
                                       ``IDLE`` timer
``(LOG, reason, detail)``              record why the stream failed
``(FINISH,)``                          the stream is over: log it, forget it, stop its timers
``(OPEN_TUNNEL,)``                     the stream is a tunnel now (the client's head was sent)
``(CLOSE_BACKEND,)``                   close the tunnel's backend connection after what was written
=====================================  ===========================================================
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
 IDLE_TIMEOUT, WHOLE) = _names(
    "START READY UNREACHABLE BUSY LOST WRITTEN REQ_DATA REQ_END CLIENT_RESET WINDOW INFO HEAD DATA "
    "TRAILERS END INVALID READ_TIMEOUT STALL_TIMEOUT FAIL UPGRADED IDLE_TIMEOUT WHOLE")
INPUTS = (START, READY, UNREACHABLE, BUSY, LOST, WRITTEN, REQ_DATA, REQ_END, CLIENT_RESET, WINDOW,
          INFO, HEAD, DATA, TRAILERS, END, INVALID, READ_TIMEOUT, STALL_TIMEOUT, FAIL, UPGRADED,
          IDLE_TIMEOUT, WHOLE)

# Commands.
(ACQUIRE, CANCEL_WAIT, SEND_HEAD, SEND_BODY, END_BODY, ACK, PAUSE_CLIENT, RESUME_CLIENT,
 PAUSE_BACKEND, RESUME_BACKEND, INFORM, RESPOND, SEND, END_RESPONSE, RESET, RELEASE_BACKEND,
 DISCARD_BACKEND, ARM, CANCEL, LOG, FINISH, OPEN_TUNNEL, CLOSE_BACKEND) = _names(
    "ACQUIRE CANCEL_WAIT SEND_HEAD SEND_BODY END_BODY ACK PAUSE_CLIENT RESUME_CLIENT PAUSE_BACKEND "
    "RESUME_BACKEND INFORM RESPOND SEND END_RESPONSE RESET RELEASE_BACKEND DISCARD_BACKEND ARM "
    "CANCEL LOG FINISH OPEN_TUNNEL CLOSE_BACKEND")

# Timers.
READ, STALL, IDLE_TIMER = _names("READ STALL IDLE")
