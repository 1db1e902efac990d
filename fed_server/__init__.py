"""Placeholder package: the Flower fed_server app arrives with the federation issue."""
