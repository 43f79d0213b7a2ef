"""hyrelay.protocol."""
