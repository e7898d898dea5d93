"""TuneForge engine package: `engine.train` is loaded lazily so torch-free submodules stay torch-free."""

from __future__ import annotations

from typing import Any

__all__ = ["train", "TrainResult", "Control"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from engine.trainer import train

        return train
    if name == "TrainResult":
        from engine.result import TrainResult

        return TrainResult
    if name == "Control":
        from engine.control import Control

        return Control
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
