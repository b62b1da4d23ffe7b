"""Datapath configuration: map sizes and build switches, validated.

Every size is a -D flag to the BPF compile (bpf/lib/maps.h holds the
defaults for a bare compile); this model is where an operator sets them.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DatapathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Sessions: 524,288 is what Cilium and Calico default to for their
    # connection tracking tables.
    flow_table_size: int = Field(524_288, ge=1024, le=1 << 26)
    # Interfaces one instance manages (a gateway has a handful).
    iface_table_size: int = Field(64, ge=1, le=4096)

    def cflags(self) -> list[str]:
        return [
            f"-DMS_FLOW_MAX={self.flow_table_size}",
            f"-DMS_IFACE_MAX={self.iface_table_size}",
        ]
