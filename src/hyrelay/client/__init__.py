"""hyrelay.client."""
