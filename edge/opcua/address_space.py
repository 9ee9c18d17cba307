"""The cell's OPC UA address space, modelled on the concepts of OPC 40100-1 (Machine Vision): a vision system with a
state machine, recipe management, result management, methods, PLC handshake variables and diagnostics.

All nodes get stable string node ids ``ns=<okcell>;s=Cell.<Folder>.<Name>`` so PLC programs can address them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping

from asyncua import Node, Server, ua
from asyncua.common.structures104 import new_enum

from okcell.names import CELL_STATES, DECISIONS

MethodHandler = Callable[..., Awaitable[Any]]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# (folder, name, variant type, initial value, writable by users)
_VARIABLES: list[tuple[str, str, ua.VariantType, Any, bool]] = [
    ("State", "CurrentState", ua.VariantType.Int32, 0, False),
    ("State", "CurrentStateName", ua.VariantType.String, "Preoperational", False),
    ("State", "ErrorText", ua.VariantType.String, "", False),
    ("State", "CameraConnected", ua.VariantType.Boolean, False, False),
    ("State", "Backend", ua.VariantType.String, "", False),
    ("Recipes", "AvailableRecipeIds", ua.VariantType.String, [], False),
    ("Recipes", "ActiveRecipeId", ua.VariantType.String, "", False),
    ("Recipes", "LastActivationError", ua.VariantType.String, "", False),
    ("Results", "ResultId", ua.VariantType.UInt32, 0, False),
    ("Results", "Cycle", ua.VariantType.UInt32, 0, False),
    ("Results", "PartId", ua.VariantType.String, "", False),
    ("Results", "RecipeId", ua.VariantType.String, "", False),
    ("Results", "TriggerTime", ua.VariantType.DateTime, EPOCH, False),
    ("Results", "ProcessingTimeMs", ua.VariantType.Double, 0.0, False),
    ("Results", "Decision", ua.VariantType.Int32, 2, False),
    ("Results", "DecisionText", ua.VariantType.String, "", False),
    ("Results", "Score", ua.VariantType.Double, 0.0, False),
    ("Results", "Threshold", ua.VariantType.Double, 0.0, False),
    ("Results", "NearestLabel", ua.VariantType.String, "", False),
    ("Results", "HeatmapPath", ua.VariantType.String, "", False),
    ("Results", "ErrorText", ua.VariantType.String, "", False),
    ("Handshake", "TriggerRequest", ua.VariantType.Boolean, False, True),
    ("Handshake", "PartId", ua.VariantType.String, "", True),
    ("Handshake", "Busy", ua.VariantType.Boolean, False, False),
    ("Handshake", "ResultValid", ua.VariantType.Boolean, False, False),
    ("Handshake", "ResultCounter", ua.VariantType.UInt32, 0, False),
    ("Handshake", "HandshakeError", ua.VariantType.String, "", False),
    ("Diagnostics", "CountOK", ua.VariantType.UInt32, 0, False),
    ("Diagnostics", "CountNOK", ua.VariantType.UInt32, 0, False),
    ("Diagnostics", "CountERROR", ua.VariantType.UInt32, 0, False),
    ("Diagnostics", "CycleTimeP50Ms", ua.VariantType.Double, 0.0, False),
    ("Diagnostics", "CycleTimeP99Ms", ua.VariantType.Double, 0.0, False),
    ("Diagnostics", "FetchTimeouts", ua.VariantType.UInt32, 0, False),
    ("Diagnostics", "Reconnects", ua.VariantType.UInt32, 0, False),
]

# Fields of ResultReadyEventType (besides the BaseEventType fields), in the order of ResultRecord.
EVENT_FIELDS: list[tuple[str, ua.VariantType]] = [
    ("ResultId", ua.VariantType.UInt32),
    ("Cycle", ua.VariantType.UInt32),
    ("PartId", ua.VariantType.String),
    ("RecipeId", ua.VariantType.String),
    ("TriggerTime", ua.VariantType.DateTime),
    ("ProcessingTimeMs", ua.VariantType.Double),
    ("Decision", ua.VariantType.Int32),
    ("DecisionText", ua.VariantType.String),
    ("Score", ua.VariantType.Double),
    ("Threshold", ua.VariantType.Double),
    ("NearestLabel", ua.VariantType.String),
    ("HeatmapPath", ua.VariantType.String),
    ("ErrorText", ua.VariantType.String),
]


@dataclass
class CellNodes:
    """Handles to the nodes the server writes; ``variables`` is keyed ``"Folder.Name"``."""

    namespace_index: int
    cell: Node
    variables: dict[str, Node]
    event_type: Node
    decision_type: Node
    state_type: Node

    def node_id(self, key: str) -> ua.NodeId:
        return self.variables[key].nodeid


async def build_address_space(server: Server, namespace: str, handlers: Mapping[str, MethodHandler]) -> CellNodes:
    """Create types, the ``Cell`` object and its children; ``handlers`` holds Trigger, Start, Stop, Reset, ActivateRecipe."""
    idx = await server.register_namespace(namespace)
    decision_type = await new_enum(server, ua.NodeId("DecisionEnum", idx), ua.QualifiedName("DecisionEnum", idx), list(DECISIONS))
    state_type = await new_enum(server, ua.NodeId("CellStateEnum", idx), ua.QualifiedName("CellStateEnum", idx), list(CELL_STATES))
    enum_of = {"Decision": decision_type.nodeid, "CurrentState": state_type.nodeid}

    event_type = await server.nodes.base_event_type.add_object_type(
        ua.NodeId("ResultReadyEventType", idx), ua.QualifiedName("ResultReadyEventType", idx)
    )
    for name, vtype in EVENT_FIELDS:
        await event_type.add_property(
            ua.NodeId(f"ResultReadyEventType.{name}", idx),
            ua.QualifiedName(name, idx),
            ua.get_default_value(vtype) if vtype != ua.VariantType.DateTime else EPOCH,
            varianttype=vtype,
            datatype=enum_of.get(name),
        )

    cell = await server.nodes.objects.add_object(ua.NodeId("Cell", idx), ua.QualifiedName("Cell", idx))
    folders: dict[str, Node] = {}
    for folder in ("State", "Recipes", "Results", "Handshake", "Diagnostics"):
        folders[folder] = await cell.add_object(ua.NodeId(f"Cell.{folder}", idx), ua.QualifiedName(folder, idx))

    variables: dict[str, Node] = {}
    for folder, name, vtype, value, writable in _VARIABLES:
        node = await folders[folder].add_variable(
            ua.NodeId(f"Cell.{folder}.{name}", idx),
            ua.QualifiedName(name, idx),
            ua.Variant(value, vtype),
            varianttype=vtype,
            datatype=enum_of.get(name),
        )
        if isinstance(value, list):
            await node.write_value_rank(1)
        if writable:
            await node.set_writable()
        variables[f"{folder}.{name}"] = node

    string_arg = _argument("PartId", ua.ObjectIds.String, "part identifier from the PLC (may be empty)")
    await cell.add_method(
        ua.NodeId("Cell.Trigger", idx), ua.QualifiedName("Trigger", idx), handlers["Trigger"],
        [string_arg], [_argument("ResultId", ua.ObjectIds.UInt32, "id of the result this trigger will produce")],
    )
    for name in ("Start", "Stop", "Reset"):
        await cell.add_method(ua.NodeId(f"Cell.{name}", idx), ua.QualifiedName(name, idx), handlers[name], [], [])
    await folders["Recipes"].add_method(
        ua.NodeId("Cell.Recipes.ActivateRecipe", idx), ua.QualifiedName("ActivateRecipe", idx), handlers["ActivateRecipe"],
        [_argument("RecipeId", ua.ObjectIds.String, "one of AvailableRecipeIds")], [],
    )
    return CellNodes(idx, cell, variables, event_type, decision_type, state_type)


def _argument(name: str, data_type: int, description: str) -> ua.Argument:
    argument = ua.Argument()
    argument.Name = name
    argument.DataType = ua.NodeId(data_type)
    argument.ValueRank = -1
    argument.Description = ua.LocalizedText(description)
    return argument


VARIANT_TYPES: dict[str, ua.VariantType] = {f"{folder}.{name}": vtype for folder, name, vtype, _, _ in _VARIABLES}


async def write_value(server: Server, nodes: CellNodes, key: str, value: Any) -> None:
    """Write one variable from inside the server (bypasses access checks, notifies subscribers)."""
    variant = ua.Variant(value, VARIANT_TYPES[key])
    await server.write_attribute_value(nodes.node_id(key), ua.DataValue(variant, SourceTimestamp=datetime.now(timezone.utc)))


def read_value(server: Server, nodes: CellNodes, key: str) -> Any:
    return server.read_attribute_value(nodes.node_id(key)).Value.Value
