"""hyrelay: a self-hosted relay, wire-compatible with Azure Relay Hybrid Connections."""

__version__ = "0.1.0"
