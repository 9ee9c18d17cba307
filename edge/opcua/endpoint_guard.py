"""Sessions only on a secure channel that matches an offered endpoint.

asyncua opens a SecurityPolicy None channel for any client, whether or not an endpoint with policy None is offered
(its fallback policy), and that channel carries no permission rules: without this guard a client without a
certificate could create a session there, send its password in clear text and call every method. OPC UA (Part 4,
5.4 and 5.6.2) lets a client use such a channel for discovery only - UaExpert and node-opcua fetch the endpoints and
the server certificate that way before they connect securely - so a channel whose policy and mode match no offered
endpoint gets the discovery services and nothing else (``BadSecurityPolicyRejected``).

A session whose connection is lost is closed after a short grace (``opcua.lost_connection_grace_s``) unless a new
connection reactivates it: asyncua keeps such a session, and its subscriptions queueing every result, for the whole
session timeout, and the fault suite measured that memory as kept for good (about 0.5 MiB per lost connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server import binary_server_asyncio
from asyncua.server.internal_session import InternalSession, SessionState
from asyncua.server.uaprocessor import UaProcessor

log = logging.getLogger(__name__)

_DISCOVERY_ONLY = {
    ua.NodeId(type_id)
    for type_id in (
        ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
        ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
        ua.ObjectIds.FindServersOnNetworkRequest_Encoding_DefaultBinary,
        ua.ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary,
    )
}


class EndpointBoundProcessor(UaProcessor):
    """asyncua's per-connection processor, serving sessions only where the channel's policy and mode are those of an
    offered endpoint (whose permission rules it carries), and closing a lost connection's session after the grace."""

    lost_connection_grace_s = 5.0
    _closing_later: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references to tasks

    async def _process_message(self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any, body: Any) -> Any:
        if typeid not in _DISCOVERY_ONLY and not self._channel_offered():
            policy = self._connection.security_policy
            log.warning(
                "OPC UA: %s asked for more than discovery on a %s/%s channel, which is not offered; refused",
                self.name, policy.URI.rsplit("#", 1)[-1], policy.Mode.name,
            )
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        return await super()._process_message(typeid, requesthdr, seqhdr, body)

    async def close(self) -> None:
        await super().close()
        session = self.session
        if session is not None and session.state is not SessionState.Closed:  # kept for reactivation (Part 4, 6.7)
            task = asyncio.create_task(self._close_unless_reactivated(session, time.monotonic()))
            self._closing_later.add(task)
            task.add_done_callback(self._closing_later.discard)

    async def _close_unless_reactivated(self, session: InternalSession, lost_at: float) -> None:
        await asyncio.sleep(self.lost_connection_grace_s)
        if session.state is not SessionState.Closed and session._last_activity <= lost_at:  # no request since
            log.info("OPC UA: session %s lost its connection %.0f s ago and was not reactivated; closed",
                     session.name, self.lost_connection_grace_s)
            await session.close_session(True)

    def _channel_offered(self) -> bool:
        policy = self._connection.security_policy
        return policy.permissions is not None and any(
            endpoint.SecurityPolicyUri == policy.URI and endpoint.SecurityMode == policy.Mode
            for endpoint in self.iserver.endpoints
        )


def install(lost_connection_grace_s: float) -> None:
    """Make asyncua's binary server use :class:`EndpointBoundProcessor` for every new connection. (asyncua has no
    per-server hook for this; the guard is what any asyncua server should do, so it is safe process-wide.)"""
    EndpointBoundProcessor.lost_connection_grace_s = lost_connection_grace_s
    binary_server_asyncio.UaProcessor = EndpointBoundProcessor
