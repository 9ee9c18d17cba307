"""Every closed set of names okcell uses, defined once: decisions, backends, cell stages and states, timings.

Each set is a ``Literal`` type for the type checker and a tuple of its values, in their published order (the
OPC UA enumerations use the tuple index), for validation, choices and iteration.
"""

from __future__ import annotations

from typing import Literal, get_args

Decision = Literal["OK", "NOK", "ERROR"]
DECISIONS: tuple[Decision, ...] = get_args(Decision)

Backend = Literal["auto", "onnxruntime", "tensorrt"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

CellStage = Literal["acquisition", "inference", "outputs"]
"""The threads of a running cell, each with its own watchdog budget."""
CELL_STAGES: tuple[CellStage, ...] = get_args(CellStage)

CellState = Literal["Preoperational", "Initializing", "Operational", "Halted", "Error"]
CELL_STATES: tuple[CellState, ...] = get_args(CellState)

InspectionTiming = Literal["preprocess", "backbone", "search", "heatmap", "total"]
"""The parts of one inspection that ``InspectionResult.timings_ms`` reports."""
INSPECTION_TIMINGS: tuple[InspectionTiming, ...] = get_args(InspectionTiming)

HeldOut = Literal["leave-one-out", "k-fold"]
"""How calibration scores each OK reference without itself, for the threshold: against the final bank less the
reference's own patches, or against the bank of the other folds."""
HELD_OUT: tuple[HeldOut, ...] = get_args(HeldOut)
