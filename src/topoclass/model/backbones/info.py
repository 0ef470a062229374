"""What identifies a pretrained backbone: recorded in configs' runs, checkpoints and model cards."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BackboneInfo:
    """A backbone's name, its package's version, the pretrained model and its weights' SHA-256."""

    name: str
    package_version: str
    model: str
    weights_sha256: str
    width: int  # numbers per crystal vector

    def as_dict(self) -> dict[str, str | int]:
        return asdict(self)

    def describe(self) -> str:
        package = f"package {self.package_version}"
        return f"{self.name} {self.model} ({package}, weights SHA-256 {self.weights_sha256})"
