"""hyrelay.server."""
