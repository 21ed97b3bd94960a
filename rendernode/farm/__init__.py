"""The render farm: an orchestrator that spreads one job over many nodes through their public API."""
