"""Sessions only on a secure channel that matches an offered endpoint.

asyncua opens a SecurityPolicy None channel for any client, whether or not an endpoint with policy None is offered
(its fallback policy), and that channel carries no permission rules: without this guard a client without a
certificate could create a session there, send its password in clear text and call every method. OPC UA (Part 4,
5.4 and 5.6.2) lets a client use such a channel for discovery only - UaExpert and node-opcua fetch the endpoints and
the server certificate that way before they connect securely - so a channel whose policy and mode match no offered
endpoint gets the discovery services and nothing else (``BadSecurityPolicyRejected``).
"""

from __future__ import annotations

import logging
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server import binary_server_asyncio
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
    offered endpoint (whose permission rules it carries)."""

    async def _process_message(self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any, body: Any) -> Any:
        if typeid not in _DISCOVERY_ONLY and not self._channel_offered():
            policy = self._connection.security_policy
            log.warning(
                "OPC UA: %s asked for more than discovery on a %s/%s channel, which is not offered; refused",
                self.name, policy.URI.rsplit("#", 1)[-1], policy.Mode.name,
            )
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        return await super()._process_message(typeid, requesthdr, seqhdr, body)

    def _channel_offered(self) -> bool:
        policy = self._connection.security_policy
        return policy.permissions is not None and any(
            endpoint.SecurityPolicyUri == policy.URI and endpoint.SecurityMode == policy.Mode
            for endpoint in self.iserver.endpoints
        )


def install() -> None:
    """Make asyncua's binary server use :class:`EndpointBoundProcessor` for every new connection. (asyncua has no
    per-server hook for this; the guard is what any asyncua server should do, so it is safe process-wide.)"""
    binary_server_asyncio.UaProcessor = EndpointBoundProcessor
