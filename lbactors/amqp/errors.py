"""Exceptions of the AMQP client.

Every exception keeps its constructor arguments in ``args`` so that ``copy.copy`` gives an
equal, independent instance: the client raises a fresh copy in every task that waits on a
dead channel or connection instead of sharing one instance (and its traceback) between tasks.
"""

from __future__ import annotations

__all__ = [
    "AMQPError",
    "AuthenticationError",
    "ChannelClosed",
    "ConnectionClosed",
    "FrameError",
    "PublishNacked",
    "PublishReturned",
]


class AMQPError(Exception):
    """Base class of everything the client raises about the broker or the protocol."""


class ConnectionClosed(AMQPError):
    """The connection is gone.

    ``reply_code`` is the server's code when it closed the connection (320 CONNECTION_FORCED,
    501 FRAME_ERROR, ...), 200 after an orderly close by us, 0 when we detected the loss
    ourselves (socket EOF or error, heartbeat timeout); ``reply_text`` says what happened.
    """

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text

    def __str__(self) -> str:
        return f"AMQP connection closed ({self.reply_code}): {self.reply_text}"


class AuthenticationError(ConnectionClosed):
    """The broker refused the login (wrong user or password, or no access to the vhost)."""

    def __str__(self) -> str:
        return f"AMQP login refused ({self.reply_code}): {self.reply_text}"


class FrameError(AMQPError):
    """The byte stream from the broker is not valid AMQP 0-9-1 framing."""


class ChannelClosed(AMQPError):
    """The channel is gone: the server closed it (e.g. 406 PRECONDITION_FAILED, 404 NOT_FOUND),
    or we did (reply_code 200)."""

    def __init__(self, reply_code: int, reply_text: str, channel_id: int) -> None:
        super().__init__(reply_code, reply_text, channel_id)
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.channel_id = channel_id

    def __str__(self) -> str:
        return f"AMQP channel {self.channel_id} closed ({self.reply_code}): {self.reply_text}"


class PublishNacked(AMQPError):
    """The broker nacked a publish in confirm mode: it did not take responsibility for it."""

    def __init__(self, delivery_tag: int) -> None:
        super().__init__(delivery_tag)
        self.delivery_tag = delivery_tag

    def __str__(self) -> str:
        return f"publish {self.delivery_tag} was nacked by the broker"


class PublishReturned(AMQPError):
    """A mandatory publish could not be routed to any queue (basic.return)."""

    def __init__(self, reply_code: int, reply_text: str, exchange: str, routing_key: str) -> None:
        super().__init__(reply_code, reply_text, exchange, routing_key)
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key

    def __str__(self) -> str:
        return (
            f"publish to exchange {self.exchange!r} with routing key {self.routing_key!r} "
            f"was returned ({self.reply_code}): {self.reply_text}"
        )
