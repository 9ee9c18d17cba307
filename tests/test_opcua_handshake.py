"""The polling bit handshake when the cell refuses a trigger (100 cycles on the real cell: test_opcua_cell.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from okcell.result import InspectionResult
from opcua_support import free_port, make_config, serving, session, var


def inspection(cycle: int, part_id: str) -> InspectionResult:
    return InspectionResult("NOK" if cycle % 4 == 0 else "OK", 0.1 * (cycle % 7), 0.35)


async def wait_until(client: Client, node: ua.NodeId, wanted: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    target = client.get_node(node)
    while await target.read_value() != wanted:
        assert time.monotonic() < deadline, f"{node.Identifier} never became {wanted!r}"
        await asyncio.sleep(0.002)


async def write_bool(node, value: bool) -> None:
    await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Boolean)))


def test_refused_trigger_sets_handshake_error_and_recovers(tmp_path: Path) -> None:
    with serving(inspection, make_config(tmp_path, free_port())) as (cell, server):

        async def plc() -> None:
            async with session(server.endpoint_url) as (client, _, idx):
                request = var(client, idx, "Handshake.TriggerRequest")
                busy, valid = var(client, idx, "Handshake.Busy").nodeid, var(client, idx, "Handshake.ResultValid").nodeid
                cell.state = "Halted"
                await write_bool(request, True)
                await wait_until(client, var(client, idx, "Handshake.HandshakeError").nodeid, "cell is Halted")
                assert await client.get_node(valid).read_value() is False
                await write_bool(request, False)
                await wait_until(client, busy, False)
                cell.state = "Operational"
                await write_bool(request, True)
                await wait_until(client, valid, True)
                assert await var(client, idx, "Handshake.HandshakeError").read_value() == ""
                await write_bool(request, False)
                await wait_until(client, busy, False)
                assert len(cell.published) == 1

        asyncio.run(plc())


def test_an_oversized_or_control_character_part_id_is_refused_at_the_write(tmp_path: Path) -> None:
    """The handshake's PartId obeys the same limit as Trigger: the write is refused, nothing reaches the cell or the
    subscribers, and a request afterwards uses the last valid part id."""
    with serving(inspection, make_config(tmp_path, free_port())) as (cell, server):

        async def plc() -> None:
            async with session(server.endpoint_url) as (client, _, idx):
                part = var(client, idx, "Handshake.PartId")
                await part.write_value(ua.DataValue(ua.Variant("valid-part", ua.VariantType.String)))
                for bad in ["x" * 8_000_000, "x" * 257, "nul\x00byte", "tab\tpart", "del\x7f"]:
                    with pytest.raises(UaStatusCodeError) as caught:
                        await part.write_value(ua.DataValue(ua.Variant(bad, ua.VariantType.String)))
                    assert caught.value.code == ua.StatusCodes.BadOutOfRange
                assert await part.read_value() == "valid-part"
                await part.write_value(ua.DataValue(ua.Variant("x" * 256, ua.VariantType.String)))  # the limit itself is fine
                await part.write_value(ua.DataValue(ua.Variant("valid-part", ua.VariantType.String)))
                request = var(client, idx, "Handshake.TriggerRequest")
                await write_bool(request, True)
                await wait_until(client, var(client, idx, "Handshake.ResultValid").nodeid, True)
                await write_bool(request, False)
                assert [result.part_id for result in cell.published] == ["valid-part"]

        asyncio.run(plc())
